"""LAMMPS loop time per step per atom with `pair_style nvnmd`, against LAMMPS's own `pair_style zero`.

    python benchmarks/lammps_loop.py [--model M.npz] [--sizes 8 16] [--np 1] [--cpus 0]
                                     [--steps-pair-zero 1000 200] [--steps-zero-device 40 10]
                                     [--steps-zero-native 200 50] [--steps-reference 20 5]
                                     [--cases pair_zero nvnmd_zero nvnmd_zero_native nvnmd_reference]
                                     [--service warm|private] [--zero-full] [--repeat R] [--json OUT.json]

The issue-18 acceptance figure (host overhead of LAMMPS + zero device over `pair_style zero`, 1 rank on
one core, >= 19,200 atoms; the service and the native core measured in the same run):

    python benchmarks/lammps_loop.py --sizes 16 --cpus 0 --cases pair_zero nvnmd_zero nvnmd_zero_native

Structures: rock-salt GeTe (a = 6.0 Å, 8 atoms per cubic cell) repeated n x n x n for each n of
--sizes (8 -> 4096 atoms, 16 -> 32768 atoms), rattled 0.05 Å with a fixed seed, written as LAMMPS data
(types 1 = Ge, 2 = Te).  Each case is a timed `lmp` run (`mpirun -np N lmp` when --np > 1) in
build/benchmarks/lammps/ (inputs, logs, screen output and service logs stay there): units metal, NVE,
velocities at 300 K, timestep 0.002 ps, `run 0` (LAMMPS's first neighbour list and setup), --warmup
further steps, then the timed `run N`.  Cases:

* pair_zero: `pair_style zero 7.0` -- LAMMPS's own integration / neighbour / communication cost;
* nvnmd_zero: `pair_style nvnmd MODEL device zero host service below_rmin allow` -- neighbour records,
  wire encoding, socket transport and folding in the Python service, without the pipeline's arithmetic
  (no force: atoms fly freely, so a long run meets pairs closer than r_min, which `allow` lets through);
* nvnmd_zero_native: `pair_style nvnmd MODEL device zero host native below_rmin allow` -- the same work
  by the native core in LAMMPS's process (no socket, no Python): its timing line is "pair nvnmd timing
  (rank 0, E evaluations, ms per evaluation): neighbours .. encode .. device .. fold .. unpack .. total
  ..; in-process core .., device zero; neighbour lists: T taken over, R reused" (neighbours: LAMMPS's
  list into the core's Domain, taken over when LAMMPS rebuilt it, else reused; encode, device, fold:
  the core's own split; unpack: its integers into LAMMPS's arrays; total: the whole pair compute; core:
  the core's own total);
* nvnmd_reference: `pair_style nvnmd MODEL device reference` -- the full path, with the bit-exact
  NumPy reference as the device;
* nvnmd_cpu: `pair_style nvnmd MODEL device cpu host native` -- the same bits from the cpu device (the
  pipeline in C++, host/native/cpu.cpp) in LAMMPS's process, on the cores the rank may use (--cpus 0:
  one core, one thread).

With --repeat R each case runs R times, the cases interleaved; the fastest run of a case stands for it
(this machine is shared: a slower run measures its other users too) and the s/step/atom of every run is
printed and kept beside it (JSON: repeats_s_per_step_per_atom, sorted).

Figures of the timed run, from LAMMPS's log: "Loop time of X on P procs for N steps with A atoms"
(s/step, s/step/atom), the "MPI task timing breakdown" rows (Pair, Neigh, Comm, ... avg over ranks, per
step), "Ave neighs/atom".  The plugin prints its timing line ("pair nvnmd timing (rank 0, E
evaluations, ms per evaluation): pack .. send .. wait .. receive .. unpack ..; in the service: encode
.. device .. assemble .. total ..; .. kB sent, .. kB received per evaluation") only when the pair style
is destroyed, so it covers every evaluation of the input, and the service's first evaluation carries
its one-time warm-up (lazy imports: about 1-2 s, and varying by ~0.5 s from one process to the next,
too much to subtract).  So by default (--service warm) the benchmark starts the service itself
(`python -m host serve`, with the arguments the plugin gives its private one), warms it with a first
LAMMPS run (`run 0` on the same box) and makes the timed run connect to it (`pair_style nvnmd MODEL
socket PATH`): all E = N + 2 evaluations of the timed run's line (its `run 0`, the setup of `run N`
and N steps) are then warm, and the line is reported as printed.  --service private lets the plugin
start its private service in the timed run instead (the usual way to run): the line then includes the
warm-up evaluation.

The host overhead of each zero-device case is its loop time per step minus pair_zero's, per atom, and
the ratio service / native of the two is measured in the same run (same box, same machine state).

Then the split: Pair time per step (reference) = transport and host-side overhead (Pair time per step
with the zero device) + device compute (the difference), each also as a multiple of the pair_zero
baseline's loop time per step; and the socket share (send + receive) / Pair time per step, which says
how much shared memory for the bulk arrays could save.  With --np > 1 the timing line is rank 0's
(its own atoms) while Pair is the average over ranks.

BLAS / OpenMP threads are pinned to --threads (default 1) for LAMMPS and the service it starts; --cpus
LIST runs LAMMPS (and the warm service) under `taskset -c LIST` (the acceptance figure: --cpus 0, so the
service shares the rank's one core, as a host with one core per rank would).
Prints the figures and writes JSON (default build/benchmarks/lammps_loop.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import write_json  # noqa: E402
from host.lammps_plugin import console_script  # noqa: E402
from contract.paths import EXAMPLE_MODEL  # noqa: E402

CASES = {
    "pair_zero": "pair_style zero",
    "nvnmd_zero": "nvnmd device zero (service)",
    "nvnmd_zero_native": "nvnmd device zero (native)",
    "nvnmd_reference": "nvnmd device reference",
    "nvnmd_cpu": "nvnmd device cpu (native)",
}
#: Where each nvnmd case's host work runs (pair_style nvnmd ... host H).
HOST = {"nvnmd_zero": "service", "nvnmd_zero_native": "native", "nvnmd_reference": "service", "nvnmd_cpu": "native"}
#: The issue's acceptance bound on the native host overhead, s/step/atom (1 rank, one core, zero device).
NATIVE_OVERHEAD_TARGET = 3e-7
TIMING_SECTIONS = ("Pair", "Neigh", "Comm", "Output", "Modify", "Other")
RE_LOOP = re.compile(r"^Loop time of (\S+) on (\d+) procs for (\d+) steps with (\d+) atoms", re.M)
RE_TIMING = re.compile(r"^pair nvnmd timing \(rank 0, (\d+) evaluations, ms per evaluation\): (.*)$", re.M)
RE_VERSION = re.compile(r"^LAMMPS \((.*)\)\s*$", re.M)


# -- inputs --------------------------------------------------------------------------------------------

def write_structure(n: int, rattle: float, seed: int, folder: Path) -> tuple[Path, int]:
    """The n x n x n rock-salt GeTe box as a LAMMPS data file; (its path, its atom count)."""
    import ase.io
    from ase.build import bulk
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((n, n, n))
    atoms.rattle(rattle, seed=seed)
    path = folder / f"gete_{len(atoms)}.data"
    ase.io.write(path, atoms, format="lammps-data", specorder=["Ge", "Te"], masses=True)
    return path, len(atoms)


def pair_lines(case: str, model: str, zero_full: bool, socket_path: str | None) -> list[str]:
    if case == "pair_zero":
        return [f"pair_style zero 7.0{' full' if zero_full else ''}", "pair_coeff * *"]
    where = f"socket {socket_path}" if socket_path else f"device {device_of(case)} host {HOST[case]}"
    # The zero device exerts no force: the atoms fly freely, and after ~100 steps at 300 K a pair comes
    # closer than r_min.  `below_rmin allow` lets such a run go on; it costs nothing more.
    allow = " below_rmin allow" if device_of(case) == "zero" else ""
    return [f"pair_style nvnmd {model} {where}{allow}", "pair_coeff * * Ge Te"]


def device_of(case: str) -> str:
    return case.split("_")[1]


def uses_service(case: str) -> bool:
    return HOST.get(case) == "service"


def input_text(data: Path, case: str, args, steps: int | None, socket_path: str | None = None) -> str:
    """The LAMMPS input; steps None: the warm-up only (no timed run)."""
    lines = ["units metal", "atom_style atomic", "newton on", f"read_data {data}",
             *pair_lines(case, args.model, args.zero_full, socket_path),
             f"velocity all create {args.temperature} {args.seed}",
             f"timestep {args.timestep}", "fix nve all nve", "thermo 0", "run 0"]
    if args.warmup:
        lines.append(f"run {args.warmup}")
    if steps is not None:
        lines.append(f"run {steps}")
    return "\n".join(lines) + "\n"


# -- running -------------------------------------------------------------------------------------------

def pinned(cmd: list[str], args) -> list[str]:
    """`taskset -c LIST cmd` when --cpus is given (children inherit the affinity)."""
    return ["taskset", "-c", args.cpus, *cmd] if args.cpus else cmd


def lammps_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    # The private service runs under the benchmark's interpreter unless told otherwise.
    env.setdefault("DPFPGA_PYTHON", sys.executable)
    return env


def run_lammps(name: str, text: str, folder: Path, args) -> tuple[str, float]:
    """Run one input; (its log text, wall seconds).  Exits with LAMMPS's ERROR lines if it fails."""
    inp, log, screen = folder / f"in.{name}", folder / f"log.{name}.lammps", folder / f"screen.{name}.txt"
    inp.write_text(text)
    log.unlink(missing_ok=True)
    cmd = [*shlex.split(args.lmp), "-in", inp.name, "-log", log.name, "-nocite"]
    if args.np > 1:
        cmd = [*shlex.split(args.mpirun), "-np", str(args.np), *cmd]
    cmd = pinned(cmd, args)
    t = time.perf_counter()
    with open(screen, "w") as out:
        proc = subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=lammps_env(args.threads),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # lmp (or mpirun and its ranks) and the private service
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    seconds = time.perf_counter() - t
    log_text = log.read_text(errors="replace") if log.exists() else ""
    if rc != 0 or "Total wall time" not in log_text:
        screen_text = screen.read_text(errors="replace")
        errors = _error_lines(log_text) or _error_lines(screen_text)
        why = f"timed out after {args.timeout} s" if rc is None else f"exit status {rc}"
        print("failed", flush=True)
        sys.exit(f"error: LAMMPS run {name} failed ({why}; {' '.join(cmd)} in {folder})\n"
                 + ("\n".join(errors) if errors else "no ERROR line; the end of its screen output:\n"
                    + "\n".join(screen_text.splitlines()[-15:]))
                 + f"\nlog: {log}\nscreen: {screen}")
    return log_text, seconds


class Service:
    """`python -m host serve` started here (the arguments the plugin gives its private service), so that it
    can be warmed by one LAMMPS run and timed warm by the next."""

    def __init__(self, model: str, device: str, chunk_atoms: int, folder: Path, name: str, threads: int,
                 cpus: str | None = None, startup_timeout: float = 300.0):
        self.dir = Path(tempfile.mkdtemp(prefix="dpfpga-bench-", dir="/tmp"))  # a Unix socket path is short
        self.socket = str(self.dir / "service.sock")
        self.log = folder / f"service.{name}.log"
        env = lammps_env(threads)
        cmd = [env["DPFPGA_PYTHON"], "-m", "host", "serve", "--socket", self.socket, "--model", model,
               "--device", device, "--chunk-atoms", str(chunk_atoms), "--owner-pid", str(os.getpid()),
               "--log-level", "WARNING"]
        if cpus:
            cmd = ["taskset", "-c", cpus, *cmd]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + startup_timeout
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
                sys.exit(f"error: the dpfpga service ({' '.join(cmd)}) did not start; its log {self.log}:\n{tail}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(self.socket)
                return True
            except OSError:
                return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the service closes its device and removes its socket
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _error_lines(text: str) -> list[str]:
    """LAMMPS's ERROR lines, each with its continuation lines (a multi-line message ends with the source
    location "(file.cpp:N)") and the "Last command" line after it."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if "ERROR" not in line:
            continue
        out.append(line)
        for nxt in lines[i + 1:i + 20]:
            if "ERROR" in nxt or not (nxt.startswith((" ", "Last command")) or nxt.rstrip().endswith(")")):
                break
            out.append(nxt)
    return out


# -- parsing -------------------------------------------------------------------------------------------

def parse_log(text: str) -> dict:
    """The last run's figures in a LAMMPS log (the timed run), and the plugin's timing line."""
    loops = list(RE_LOOP.finditer(text))
    if not loops:
        raise ValueError("no 'Loop time' line in the LAMMPS log")
    m = loops[-1]
    last = text[m.start():]
    out = {"loop_seconds": float(m.group(1)), "procs": int(m.group(2)), "steps": int(m.group(3)),
           "atoms": int(m.group(4)), "sections": {}}
    cpu = re.search(r"^([\d.]+)% CPU use with (\d+) MPI tasks x (\d+) OpenMP threads", last, re.M)
    if cpu:
        out["cpu_use_percent"], out["mpi_tasks"], out["omp_threads"] = float(cpu[1]), int(cpu[2]), int(cpu[3])
    for sec in TIMING_SECTIONS:
        row = re.search(rf"^{sec}\s*\|(.*)$", last, re.M)
        if row:
            cells = [c.strip() for c in row.group(1).split("|")]
            if sec == "Other":  # only avg and %total
                out["sections"][sec] = {"avg": float(cells[1]), "percent": float(cells[-1])}
            else:
                out["sections"][sec] = {"min": float(cells[0]), "avg": float(cells[1]), "max": float(cells[2]),
                                        "percent": float(cells[-1])}
    for key, pat in (("ave_neighs_per_atom", r"^Ave neighs/atom = (\S+)"),
                     ("total_neighbors", r"^Total # of neighbors = (\S+)"),
                     ("neighbor_list_builds", r"^Neighbor list builds = (\S+)"),
                     ("dangerous_builds", r"^Dangerous builds = (\S+)")):
        g = re.search(pat, last, re.M)
        if g:
            out[key] = float(g[1])
    # The thermo lines of the timed run (first and last step), to notice odd energies.
    head = text[:m.start()]
    k = head.rfind("   Step ")
    if k >= 0:
        rows = head[k:].splitlines()
        names = rows[0].split()
        values = [r.split() for r in rows[1:] if r.split() and r.split()[0].isdigit()]
        if values:
            out["thermo"] = {"first": dict(zip(names, map(float, values[0]))),
                             "last": dict(zip(names, map(float, values[-1])))}
    t = parse_timing(text)
    if t:
        out["nvnmd_timing"] = t
    g = re.search(r"^pair nvnmd: model .*$", text, re.M)
    if g:
        out["nvnmd_service"] = g[0]
    return out


def parse_timing(text: str) -> dict | None:
    """The plugin's timing line -> {evaluations, pack, send, ..., service_encode, ..., kB_sent, kB_received, line}
    (host service) or {evaluations, neighbours, encode, device, fold, unpack, total, core, line, host} (native)."""
    m = RE_TIMING.search(text)
    if not m:
        return None
    out = {"line": m.group(0), "evaluations": int(m.group(1))}
    if "in-process core" in m.group(2):
        out["host"] = "native"
        figures, _, lists = m.group(2).replace("in-process core", "core").partition("neighbour lists:")
        out.update({k: float(v) for k, v in re.findall(r"(\w+) ([-\d.eE+]+)", figures)})
        g = re.search(r"(\d+) taken over, (\d+) reused", lists)
        if g:
            out["lists_taken_over"], out["lists_reused"] = int(g[1]), int(g[2])
        return out
    out["host"] = "service"
    client, service, traffic = (s.strip() for s in m.group(2).split(";"))
    out.update({k: float(v) for k, v in re.findall(r"(\w+) ([-\d.eE+]+)", client)})
    out.update({f"service_{k}": float(v)
                for k, v in re.findall(r"(\w+) ([-\d.eE+]+)", service.replace("in the service:", ""))})
    sent = re.search(r"([\d.]+) kB sent", traffic)
    recv = re.search(r"([\d.]+) kB received", traffic)
    out["kB_sent"], out["kB_received"] = float(sent[1]), float(recv[1])
    return out


# -- main ----------------------------------------------------------------------------------------------

def per_size(values: list[int], i: int) -> int:
    return values[min(i, len(values) - 1)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EXAMPLE_MODEL))
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16],
                   help="cubic cells per box edge (8 atoms each): 8 -> 4096 atoms, 16 -> 32768 (default 8 16)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=[c for c in CASES if c != "nvnmd_cpu"],
                   help="default: all but nvnmd_cpu (benchmarks/cpu_device.py runs that one)")
    p.add_argument("--steps-pair-zero", type=int, nargs="+", default=[1000, 200],
                   help="timed steps of pair_style zero, one per size (the last repeats)")
    p.add_argument("--steps-zero-device", type=int, nargs="+", default=[40, 10],
                   help="timed steps of nvnmd device zero, one per size")
    p.add_argument("--steps-zero-native", type=int, nargs="+", default=[200, 50],
                   help="timed steps of nvnmd device zero host native, one per size")
    p.add_argument("--steps-reference", type=int, nargs="+", default=[20, 5],
                   help="timed steps of nvnmd device reference, one per size")
    p.add_argument("--steps-cpu", type=int, nargs="+", default=[50, 10],
                   help="timed steps of nvnmd device cpu, one per size")
    p.add_argument("--warmup", type=int, default=0, help="MD steps after `run 0` before the timed run (default 0)")
    p.add_argument("--service", choices=["warm", "private"], default="warm",
                   help="warm (default): a service started here, warmed by a first LAMMPS run, timed over "
                        "`socket`; private: the plugin's own private service (its timing line then includes "
                        "the warm-up evaluation)")
    p.add_argument("--chunk-atoms", type=int, default=4096,
                   help="the service's centre atoms per device chunk (--service warm; the plugin's default 4096)")
    p.add_argument("--np", type=int, default=1, help="MPI ranks (mpirun -np N lmp when > 1)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP / BLAS threads for LAMMPS and the service")
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="run LAMMPS and the warm service under `taskset -c LIST` (the acceptance figure: 0)")
    p.add_argument("--zero-full", action="store_true",
                   help="pair_style zero 7.0 full: the baseline builds a full neighbour list as nvnmd does "
                        "(default: half list)")
    p.add_argument("--repeat", type=int, default=1,
                   help="timed runs per case, the cases interleaved; the fastest stands for the case and every "
                        "run's s/step/atom is reported beside it (default 1)")
    p.add_argument("--seed", type=int, default=12345, help="rattle and velocity seed")
    p.add_argument("--rattle", type=float, default=0.05, help="random displacement, Å (default 0.05)")
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--timestep", type=float, default=0.002, help="ps (default 0.002)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per lmp run (default 1200)")
    p.add_argument("--lmp", default=console_script("lmp"))
    p.add_argument("--mpirun", default=console_script("mpirun"))
    p.add_argument("--workdir", default=str(REPO / "build" / "benchmarks" / "lammps"))
    p.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "lammps_loop.json"))
    args = p.parse_args(argv)
    args.model = str(Path(args.model).resolve())
    if not Path(args.model).exists():
        sys.exit(f"error: model file {args.model} not found")
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    steps_of = {"pair_zero": args.steps_pair_zero, "nvnmd_zero": args.steps_zero_device,
                "nvnmd_zero_native": args.steps_zero_native, "nvnmd_reference": args.steps_reference,
                "nvnmd_cpu": args.steps_cpu}

    result = {"benchmark": "lammps_loop", "model": args.model, "nproc": os.cpu_count(), "np": args.np,
              "threads": args.threads, "host": platform.node(), "timestep_ps": args.timestep,
              "temperature_K": args.temperature, "seed": args.seed, "rattle_A": args.rattle,
              "warmup_steps": args.warmup, "service": args.service, "cpus": args.cpus,
              "zero_full_list": args.zero_full, "workdir": str(folder), "sizes": {}}
    result["load_average_start"] = os.getloadavg()
    try:  # the plugin's core runs the build of the record kernels this CPU allows, as the extension does
        from host import native
        result["record_kernels"] = native.record_kernels() if native.available() else None
    except Exception as e:  # the figures stand without it
        result["record_kernels"] = f"unknown ({e})"
    runs = [(n, c) for n in args.sizes for c in args.cases]
    total_runs = args.repeat * sum(1 + (uses_service(c) and args.service == "warm") for _, c in runs)
    print(f"{len(args.sizes)} size(s) x {len(args.cases)} case(s): {total_runs} lmp runs with {args.np} MPI rank(s), "
          f"{args.threads} thread(s), on a {os.cpu_count()}-core machine; work folder {folder}")
    k = 0
    t_all = time.perf_counter()
    for i, n in enumerate(args.sizes):
        data, natoms = write_structure(n, args.rattle, args.seed, folder)
        size = result["sizes"][natoms] = {"cells": n, "data": str(data), "cases": {}}
        runs_of = {case: [] for case in args.cases}
        for r in range(args.repeat):  # the cases interleaved, so that each sees the machine's same moods
            for case in args.cases:
                steps = per_size(steps_of[case], i)
                name = f"{case}_{natoms}" + (f"_run{r + 1}" if args.repeat > 1 else "")
                service = None
                try:
                    if uses_service(case) and args.service == "warm":
                        t = time.perf_counter()
                        service = Service(args.model, device_of(case), args.chunk_atoms, folder, name, args.threads,
                                          args.cpus)
                        k += 1
                        print(f"[{k}/{total_runs}] {natoms} atoms, {CASES[case]}: service started in "
                              f"{time.perf_counter() - t:.1f} s, warm-up run (run 0"
                              f"{f' + run {args.warmup}' if args.warmup else ''}) ...", end=" ", flush=True)
                        wlog, wwall = run_lammps(name + "_warmup", input_text(data, case, args, None, service.socket),
                                                 folder, args)
                        print(f"{wwall:.1f} s", flush=True)
                        warm = parse_timing(wlog)
                    k += 1
                    print(f"[{k}/{total_runs}] {natoms} atoms, {CASES[case]}: timed, run 0 + "
                          f"{f'run {args.warmup} + ' if args.warmup else ''}run {steps} ...", end=" ", flush=True)
                    log, wall = run_lammps(name, input_text(data, case, args, steps, service and service.socket),
                                           folder, args)
                    print(f"{wall:.1f} s", flush=True)
                finally:
                    if service:
                        service.stop()
                fig = parse_log(log)
                fig["wall_seconds"] = wall
                if "lammps_version" not in result:
                    v = RE_VERSION.search(log)
                    result["lammps_version"] = v[1] if v else "unknown"
                if fig["steps"] != steps or fig["atoms"] != natoms:
                    sys.exit(f"error: {name}: the last run was {fig['steps']} steps with {fig['atoms']} atoms, "
                             f"expected {steps} with {natoms}")
                if case != "pair_zero":
                    if "nvnmd_timing" not in fig:
                        sys.exit(f"error: {name}: no 'pair nvnmd timing' line in {folder / f'log.{name}.lammps'}")
                    fig["per_evaluation"] = {k2: v for k2, v in fig["nvnmd_timing"].items() if k2 != "line"}
                    if service:
                        fig["warmup_run"] = {"wall_seconds": wwall, "nvnmd_timing": warm}
                runs_of[case].append(fig)
        for case, figs in runs_of.items():
            # the fastest run stands for the case (the machine is shared: slower runs measure its other
            # users); every run's s/step/atom is kept beside it
            fig = min(figs, key=lambda f: f["loop_seconds"])
            fig["repeats_s_per_step_per_atom"] = sorted(f["loop_seconds"] / f["steps"] / natoms for f in figs)
            size["cases"][case] = fig
        derive(size, natoms)
    result["total_wall_seconds"] = time.perf_counter() - t_all
    result["load_average_end"] = os.getloadavg()
    report(result)
    write_json(result, args.json)


def derive(size: dict, natoms: int) -> None:
    """Per-step figures, the reference = overhead + compute split and the socket shares."""
    cases = size["cases"]
    for fig in cases.values():
        s = fig["steps"]
        fig["s_per_step"] = fig["loop_seconds"] / s
        fig["s_per_step_per_atom"] = fig["s_per_step"] / natoms
        fig["section_s_per_step"] = {sec: v["avg"] / s for sec, v in fig["sections"].items()}
        pe = fig.get("per_evaluation")
        if pe and pe["host"] == "service":
            pair = fig["section_s_per_step"].get("Pair", float("nan"))
            sock = (pe["send"] + pe["receive"]) / 1e3
            fig["socket_s_per_evaluation"] = sock
            fig["socket_share_of_pair"] = sock / pair if pair > 0 else float("nan")
            fig["service_other_ms"] = pe["wait"] - pe["service_total"]  # service-side framing, decode, queueing
            fig["bytes_per_evaluation"] = {"sent": pe["kB_sent"] * 1e3, "received": pe["kB_received"] * 1e3}
            own = natoms / fig["procs"]  # rank 0's share of the atoms (the timing line is rank 0's)
            fig["bytes_per_atom"] = {"sent": pe["kB_sent"] * 1e3 / own, "received": pe["kB_received"] * 1e3 / own}
    base = cases.get("pair_zero", {}).get("s_per_step")
    split = {}
    if base:
        split["baseline_s_per_step"] = base
    if "nvnmd_zero" in cases and "nvnmd_reference" in cases:
        ref = cases["nvnmd_reference"]["section_s_per_step"]["Pair"]
        ovh = cases["nvnmd_zero"]["section_s_per_step"]["Pair"]
        # The zero device is not free: its "device" time is the Python decode of the input beats and
        # encode of the zero results, which a card would do in hardware.
        zdev = cases["nvnmd_zero"]["per_evaluation"]["service_device"] / 1e3
        split.update({"pair_reference_s_per_step": ref, "transport_overhead_s_per_step": ovh,
                      "device_compute_s_per_step": ref - ovh, "zero_device_own_s_per_step": zdev,
                      "overhead_without_zero_device_s_per_step": ovh - zdev})
    if base:
        for key in list(split):
            if key != "baseline_s_per_step":
                split[key.replace("_s_per_step", "_x_baseline")] = split[key] / base
        for case in ("nvnmd_zero", "nvnmd_zero_native", "nvnmd_reference"):
            if case in cases:
                split[f"{case}_loop_x_baseline"] = cases[case]["s_per_step"] / base
        # The host overhead (the acceptance figure): loop time over pair_style zero's, per step and atom.
        for case in ("nvnmd_zero", "nvnmd_zero_native"):
            if case in cases:
                split[f"{case}_overhead_s_per_step_per_atom"] = (cases[case]["s_per_step"] - base) / natoms
        if "nvnmd_zero" in cases and "nvnmd_zero_native" in cases:
            split["overhead_service_over_native"] = (split["nvnmd_zero_overhead_s_per_step_per_atom"]
                                                     / split["nvnmd_zero_native_overhead_s_per_step_per_atom"])
        if "nvnmd_zero_native" in cases:
            split["native_overhead_target_s_per_step_per_atom"] = NATIVE_OVERHEAD_TARGET
            split["native_overhead_meets_target"] = (
                split["nvnmd_zero_native_overhead_s_per_step_per_atom"] <= NATIVE_OVERHEAD_TARGET)
    size["split"] = split


def report(result: dict) -> None:
    print(f"\nLAMMPS {result.get('lammps_version')}; {result['np']} MPI rank(s), {result['threads']} thread(s), "
          f"{result['nproc']} cores; model {result['model']}; NVE {result['temperature_K']:g} K, "
          f"dt {result['timestep_ps']} ps; {result['service']} service"
          + (f"; pinned to CPUs {result['cpus']}" if result.get("cpus") else ""))
    for natoms, size in result["sizes"].items():
        cases = size["cases"]
        print(f"\n{natoms} atoms ({size['cells']}^3 rock-salt cells)")
        print(f"  {'case':30s} {'steps':>5s} {'loop s/step':>12s} {'s/step/atom':>12s} {'Pair s/step':>12s} "
              f"{'Neigh s/step':>12s} {'Comm s/step':>12s} {'x baseline':>10s} {'neighs/atom':>11s} {'nl builds':>9s}")
        base = size["split"].get("baseline_s_per_step")
        for case, fig in cases.items():
            sec = fig["section_s_per_step"]
            ratio = f"{fig['s_per_step'] / base:10.1f}" if base else f"{'-':>10s}"
            print(f"  {CASES[case]:30s} {fig['steps']:5d} {fig['s_per_step']:12.4e} {fig['s_per_step_per_atom']:12.3e} "
                  f"{sec.get('Pair', 0):12.4e} {sec.get('Neigh', 0):12.4e} {sec.get('Comm', 0):12.4e} {ratio} "
                  f"{fig.get('ave_neighs_per_atom', float('nan')):11.2f} {int(fig.get('neighbor_list_builds', -1)):9d}")
        for case, fig in cases.items():
            reps = fig.get("repeats_s_per_step_per_atom", [])
            if len(reps) > 1:
                print(f"  {CASES[case]}: s/step/atom over {len(reps)} runs: fastest {reps[0]:.3e}, median "
                      f"{reps[len(reps) // 2]:.3e}, slowest {reps[-1]:.3e} (the fastest is shown above)")
        for case, fig in cases.items():
            pe = fig.get("per_evaluation")
            if not pe:
                continue
            if pe["host"] == "native":
                own = int(natoms) / fig["procs"]
                print(f"  {CASES[case]}: ms per evaluation over {pe['evaluations']} evaluations: neighbours "
                      f"{pe['neighbours']:.3f} encode {pe['encode']:.3f} device {pe['device']:.3f} fold "
                      f"{pe['fold']:.3f} unpack {pe['unpack']:.3f} total {pe['total']:.3f} (the core's own total "
                      f"{pe['core']:.3f}); {pe['total'] * 1e-3 / own:.3e} s per atom (rank 0's atoms); LAMMPS's "
                      f"neighbour lists taken over {pe.get('lists_taken_over', '?')} times, reused "
                      f"{pe.get('lists_reused', '?')}")
                continue
            print(f"  {CASES[case]}: ms per evaluation over {pe['evaluations']} evaluations: pack {pe['pack']:.3f} "
                  f"send {pe['send']:.3f} wait {pe['wait']:.3f} receive {pe['receive']:.3f} unpack {pe['unpack']:.3f}; "
                  f"in the service: encode {pe['service_encode']:.3f} device {pe['service_device']:.3f} "
                  f"assemble {pe['service_assemble']:.3f} total {pe['service_total']:.3f} "
                  f"(wait - total {fig['service_other_ms']:.3f}); {pe['kB_sent']:.1f} kB sent, "
                  f"{pe['kB_received']:.1f} kB received ({fig['bytes_per_atom']['sent']:.1f} / "
                  f"{fig['bytes_per_atom']['received']:.1f} B/atom)")
            if fig.get("warmup_run", {}).get("nvnmd_timing"):
                print(f"    (the service's warm-up run: {fig['warmup_run']['nvnmd_timing']['line']})")
        sp = size["split"]
        if "pair_reference_s_per_step" in sp:
            b = (lambda key: f" ({sp[key.replace('_s_per_step', '_x_baseline')]:.1f} x baseline)") if base else (lambda key: "")
            print(f"  split: Pair (reference) {sp['pair_reference_s_per_step'] * 1e3:.2f} ms/step"
                  f"{b('pair_reference_s_per_step')} = transport + host overhead (Pair, device zero) "
                  f"{sp['transport_overhead_s_per_step'] * 1e3:.2f} ms{b('transport_overhead_s_per_step')} + device "
                  f"compute {sp['device_compute_s_per_step'] * 1e3:.2f} ms{b('device_compute_s_per_step')}"
                  + (f"; baseline (pair_style zero) loop {base * 1e3:.2f} ms/step" if base else ""))
            print(f"    (the zero device's own work, its wire decode + encode in Python, is "
                  f"{sp['zero_device_own_s_per_step'] * 1e3:.2f} ms of the overhead: without it "
                  f"{sp['overhead_without_zero_device_s_per_step'] * 1e3:.2f} ms"
                  f"{b('overhead_without_zero_device_s_per_step')})")
        if "nvnmd_zero_native_overhead_s_per_step_per_atom" in sp:
            line = (f"  host overhead over pair_style zero (loop time, s/step/atom): native "
                    f"{sp['nvnmd_zero_native_overhead_s_per_step_per_atom']:.3e} (target <= "
                    f"{NATIVE_OVERHEAD_TARGET:.0e}: {'met' if sp['native_overhead_meets_target'] else 'NOT met'})")
            if "overhead_service_over_native" in sp:
                line += (f", service {sp['nvnmd_zero_overhead_s_per_step_per_atom']:.3e}: the native core's "
                         f"overhead is {sp['overhead_service_over_native']:.1f}x smaller")
            print(line)
        for case, fig in cases.items():
            if "socket_share_of_pair" in fig:
                print(f"  socket copy ({CASES[case]}): {fig['socket_s_per_evaluation'] * 1e3:.3f} ms of "
                      f"{fig['section_s_per_step']['Pair'] * 1e3:.2f} ms per step: {fig['socket_share_of_pair'] * 100:.2f} %")
    print(f"\ntotal {result['total_wall_seconds']:.0f} s; load average (1, 5, 15 min) at the start "
          + " ".join(f"{x:.2f}" for x in result["load_average_start"]) + ", at the end "
          + " ".join(f"{x:.2f}" for x in result["load_average_end"]))


if __name__ == "__main__":
    main()
