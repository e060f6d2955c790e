"""Fixtures for the host tests: the bundled model and device services run as
subprocesses (`python -m host serve`) that are always stopped afterwards, even when a test fails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import REPO

START_TIMEOUT = 60.0  # s: the model loads in under a second; a loaded CI machine gets slack


@pytest.fixture(scope="session")
def qm():
    from contract import modelfile
    from contract.paths import EXAMPLE_MODEL
    return modelfile.load(EXAMPLE_MODEL)


@dataclass
class ServiceProcess:
    proc: subprocess.Popen
    path: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 30.0) -> str:
        """The log once it contains `text` (bounded wait; fails with the log otherwise)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_text()):
            if time.monotonic() > deadline:
                pytest.fail(f"service log never showed {text!r} within {timeout} s:\n{log}")
            time.sleep(0.05)
        return log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def spawn_service(path: Path, log: Path, *extra: str) -> ServiceProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as err:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "host", "serve", "--device", "reference",
                                 "--socket", str(path), *extra],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return ServiceProcess(proc, Path(path), Path(log))


def wait_listening(svc: ServiceProcess, timeout: float = START_TIMEOUT) -> ServiceProcess:
    """Until a connect to the socket succeeds (the file appears at bind, connects succeed from listen)."""
    deadline = time.monotonic() + timeout
    while True:
        if svc.proc.poll() is not None:
            pytest.fail(f"service exited with {svc.proc.returncode} before listening:\n{svc.log_text()}")
        if svc.path.exists():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(svc.path))
                return svc
            except OSError:
                pass
            finally:
                s.close()
        if time.monotonic() > deadline:
            svc.stop()
            pytest.fail(f"service not listening at {svc.path} after {timeout} s:\n{svc.log_text()}")
        time.sleep(0.05)


@pytest.fixture
def start_service(tmp_path, request):
    """start_service(name="svc.sock", *extra_args) -> a listening ServiceProcess, stopped at teardown."""
    def start(name: str = "svc.sock", *extra: str, wait: bool = True) -> ServiceProcess:
        svc = spawn_service(tmp_path / name, tmp_path / f"{name}.log", *extra)
        request.addfinalizer(svc.stop)
        return wait_listening(svc) if wait else svc
    return start


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One service shared by the tests that leave it running; stopped when the module ends."""
    d = tmp_path_factory.mktemp("svc")
    svc = spawn_service(d / "svc.sock", d / "svc.log")
    try:
        yield wait_listening(svc)
    finally:
        svc.stop()
