"""DeePMD-kit itself on this CPU, with the bundled GeTe model's architecture, beside the cpu device.

    python benchmarks/deepmd_kit.py [--sizes 4096 32768] [--threads 1 2] [--repeat 3] [--warmup 3] [--steps 20]
                                    [--no-compress] [--no-cpu-device] [--fresh] [--json OUT.json]

What it sets up (once; later runs reuse it unless --fresh), all under build/deepmd-kit/ and build/venv-deepmd/:

* a venv, build/venv-deepmd, made with --system-site-packages so that torch, numpy, scipy, ase and vesin come
  from the system (never another torch: it would pull a multi-GB CUDA build); DeePMD-kit (--deepmd-version,
  3.2.0 by default) installed there with --no-deps, plus the pure-Python dependencies it imports that the
  system lacks (dargs, wcmatch, ...; see NEEDED).
* DeePMD-kit's PyTorch custom operators (libdeepmd_op_pt.so, needed by `dp --pt compress` and by compressed
  models) are compiled by the wheel against one torch version (3.2.0: torch 2.11) and do not load into another
  (the system's torch 2.13: an undefined libtorch symbol).  Where they do not load, this script downloads the
  same version's sdist (pip download), builds only that library against the system torch (CMake from PyPI in
  the venv, Ninja), and puts it in the venv's deepmd/lib (the wheel's copy is kept beside it as *.wheel).
* a model with the bundled GeTe model's architecture (python -m model info model/examples/GeTe-example.npz):
  se_e2_a, rcut 7.0, rcut_smth 2.0, sel [60, 60], embedding [8, 16, 32] with DeePMD's resnet where widths
  double, one embedding per neighbour type (type_one_side, as the model's G[Ge], G[Te] tables), axis_neuron 4,
  fitting [128, 128, 128] with resnet on equal widths and no timestep (resnet_dt false), type_map [Ge, Te],
  float64.  Activation tanh everywhere: our fitting net uses NVNMD's tanh4 polynomial instead, which DeePMD-kit
  does not offer; the operation count is the same (one element-wise function per neuron).  Trained for --steps
  steps on the 216-atom GeTe AIMD data (only the timing matters), frozen (`dp --pt freeze`) and compressed
  (`dp --pt compress`: the embedding nets become 5th-order polynomial tables, as ours are tables).

What it measures: seconds per atom of one evaluation of energy, forces and virial with deepmd.infer.DeepPot
(the plain frozen .pth and the compressed one; neighbour list by DeePMD-kit's default builder, vesin-torch,
timed with the evaluation), on rock-salt GeTe (a = 6.0 Å, 0.15 Å RMS displacements, as benchmarks/host_native.py's
boxes), the median of --repeat evaluations after --warmup untimed ones (3: TorchScript specializes over the first
calls), with T = 1 and 2 threads (torch.set_num_threads, OMP_NUM_THREADS, DP_INTRA/INTER_OP_PARALLELISM_THREADS),
the process pinned to T cores (os.sched_setaffinity: the first T cores it may use).  Each case runs in its own
process of the venv's python.  Unless --no-cpu-device, the same boxes and threads with our cpu device
(host.evaluate.Evaluator, native core, device cpu, the bundled model; benchmarks/cpu_device.py's timing), in a
process of this python, so that ratios come from one run.  A case that fails is reported as failed with its error
(DeePMD-kit's Python inference needs memory growing faster than the atom count: 2.8 GB peak at 4,096 atoms, one
44 GB allocation at 32,768 on this 24 GB machine).  The machine is shared: the load average is recorded at the
start and the end.

Writes JSON (default build/benchmarks/deepmd_kit.json) and prints a table.  If DeePMD-kit's PyTorch backend
cannot be made to work here, it says why and prints, labelled as such, the figures issue 19 quotes as measured
earlier on this machine type through LAMMPS (1.9e-4 s/step/atom compressed, 4.5e-4 plain).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "build" / "venv-deepmd"
WORK = REPO / "build" / "deepmd-kit"
DATA = Path("/work/shared/data/GeTe-aimd/216atom-melt-quench")
QUOTED = {"compressed_s_per_step_per_atom": 1.9e-4, "plain_s_per_step_per_atom": 4.5e-4,
          "source": "issue 19, measured earlier on this machine type, DeePMD-kit through LAMMPS"}
# Imported by deepmd / deepmd.pt: (a statement that must run in the venv, the PyPI requirement that makes it run),
# installed with --no-deps where the system lacks them.  torch, numpy, scipy, sympy, ase, vesin: from the system.
# The system's e3nn (0.4) calls torch.load in a way torch 2.6+ refuses, and deepmd.pt imports e3nn.o3.
NEEDED = [("import dargs", "dargs"), ("import typeguard", "typeguard"), ("import wcmatch", "wcmatch"),
          ("import bracex", "bracex"), ("import einops", "einops"), ("import ml_dtypes", "ml_dtypes"),
          ("import array_api_compat", "array-api-compat"), ("import msgpack", "msgpack"), ("import yaml", "pyyaml"),
          ("import h5py", "h5py"), ("import packaging", "packaging"), ("import lmdb", "lmdb"),
          ("import opt_einsum_fx", "opt_einsum_fx"), ("import opt_einsum", "opt_einsum"),
          ("import e3nn.o3", "e3nn>=0.5.9"),
          # DeepPot's O(N) neighbour list (without it, DeePMD-kit builds an O(N^2) one: 32,768 atoms would not fit)
          ("import vesin.torch", "vesin-torch"),
          # training's type statistics sort elements with mendeleev
          ("import sqlalchemy", "sqlalchemy"), ("import pyfiglet", "pyfiglet"), ("import deprecated", "deprecated"),
          ("import wrapt", "wrapt"), ("import flexcache", "flexcache"), ("import flexparser", "flexparser"),
          ("import pint", "pint"), ("from mendeleev import element", "mendeleev")]
# DeePMD-kit's nvalchemi-toolkit-ops and tensorflow are not needed for se_e2_a with PyTorch.


def vpython() -> str:
    return str(VENV / "bin" / "python")


def sh(cmd, **kw):
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def probe(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([vpython(), "-c", code], capture_output=True, text=True, check=False)


# ---------------------------------------------------------------- set-up


def ensure_venv(version: str) -> None:
    if not (VENV / "bin" / "python").exists():
        sh([sys.executable, "-m", "venv", "--system-site-packages", VENV])
    have = probe("import importlib.metadata as m; print(m.version('deepmd-kit'))")
    if have.returncode != 0 or have.stdout.strip() != version:
        sh([vpython(), "-m", "pip", "install", "--no-deps", f"deepmd-kit=={version}"])
    missing = [pkg for stmt, pkg in NEEDED if probe(stmt).returncode != 0]
    if missing:
        sh([vpython(), "-m", "pip", "install", "--no-deps", *missing])
    # torch must be the system's: a venv copy would be a multi-GB CUDA build
    where = probe("import torch; print(torch.__file__)").stdout.strip()
    assert where and not where.startswith(str(VENV)), f"torch in the venv ({where}): remove it"


def deepmd_lib() -> Path:
    out = probe("import deepmd, pathlib; print(pathlib.Path(deepmd.__file__).parent / 'lib')")
    return Path(out.stdout.strip())


def ops_load() -> tuple[bool, str]:
    """Whether deepmd.pt imports with its custom operators loaded; else the error's last line."""
    r = probe("from deepmd.pt.cxx_op import ENABLE_CUSTOMIZED_OP as ok; assert ok, 'no op library'; "
              "import torch; torch.ops.deepmd.tabulate_fusion_se_a")
    return r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]


def build_ops(version: str) -> None:
    """Build libdeepmd_op_pt.so from DeePMD-kit's sdist against the system torch and put it in the venv."""
    src_dir = WORK / "src"
    tarball = src_dir / f"deepmd_kit-{version}.tar.gz"
    if not tarball.exists():
        sh([vpython(), "-m", "pip", "download", "--no-deps", "--no-binary", "deepmd-kit",
            f"deepmd-kit=={version}", "-d", src_dir])
    tree = src_dir / f"deepmd_kit-{version}"
    if not tree.exists():
        sh(["tar", "xzf", tarball, "-C", src_dir])
    # Debian's CMake (3.25.1) is older than DeePMD-kit asks for; PyPI's cmake wheel goes into the venv
    if probe("import cmake").returncode != 0:
        sh([vpython(), "-m", "pip", "install", "cmake"])
    cmake = VENV / "bin" / "cmake"
    ninja = shutil.which("ninja")
    torch_prefix = subprocess.run([sys.executable, "-c", "import torch; print(torch.utils.cmake_prefix_path)"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    bdir = WORK / "op-build"
    bdir.mkdir(parents=True, exist_ok=True)
    sh([cmake, tree / "source", *(["-G", "Ninja"] if ninja else []), "-DCMAKE_BUILD_TYPE=Release",
        "-DENABLE_PYTORCH=ON", "-DENABLE_TENSORFLOW=OFF", "-DBUILD_PY_IF=ON", "-DBUILD_CPP_IF=OFF",
        "-DUSE_PT_PYTHON_LIBS=ON", "-DDEEPMD_BYPASS_TORCH_CUDA_CHECK=ON", f"-DCMAKE_PREFIX_PATH={torch_prefix}",
        f"-DPython_EXECUTABLE={sys.executable}"], cwd=bdir, stdout=subprocess.DEVNULL)
    t = time.perf_counter()
    sh([cmake, "--build", ".", "--target", "deepmd_op_pt", "-j", str(len(os.sched_getaffinity(0)))], cwd=bdir)
    print(f"  built in {time.perf_counter() - t:.0f} s", flush=True)
    lib = deepmd_lib()
    for name in ("libdeepmd_op_pt.so", "libdeepmd.so"):
        built = next(bdir.rglob(name), None)
        if built is None:
            continue
        dest = lib / name
        keep = dest.with_name(name + ".wheel")
        if dest.exists() and not keep.exists():
            dest.rename(keep)
        shutil.copy2(built, dest)
        print(f"  {built} -> {dest}", flush=True)


def ensure_ops(version: str) -> tuple[bool, str]:
    ok, why = ops_load()
    if ok:
        rebuilt = (deepmd_lib() / "libdeepmd_op_pt.so.wheel").exists()
        return True, ("custom operators built from the sdist against the system torch" if rebuilt
                      else "the wheel's custom operators")
    print(f"DeePMD-kit's PyTorch operators do not load: {why}\n  building them against the system torch",
          flush=True)
    build_ops(version)
    ok, why2 = ops_load()
    return ok, ("custom operators built from the sdist against the system torch" if ok
                else f"{why} / after the build: {why2}")


# ---------------------------------------------------------------- the model


def training_input(steps: int, systems: list[str]) -> dict:
    return {
        "model": {
            "type_map": ["Ge", "Te"],
            "descriptor": {"type": "se_e2_a", "sel": [60, 60], "rcut_smth": 2.0, "rcut": 7.0,
                           "neuron": [8, 16, 32], "axis_neuron": 4, "resnet_dt": False, "type_one_side": True,
                           "activation_function": "tanh", "precision": "float64", "seed": 1},
            "fitting_net": {"neuron": [128, 128, 128], "resnet_dt": False, "activation_function": "tanh",
                            "precision": "float64", "seed": 1},
        },
        "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-4, "decay_steps": max(1, steps // 2)},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1,
                 "start_pref_v": 0, "limit_pref_v": 0},
        "training": {"training_data": {"systems": systems, "batch_size": 1}, "numb_steps": steps,
                     "disp_freq": max(1, steps // 4), "save_freq": steps, "seed": 1},
    }


def dp(args, cwd: Path, log: str):
    with open(cwd / log, "w") as f:
        sh([VENV / "bin" / "dp", "--pt", *args], cwd=cwd, stdout=f, stderr=subprocess.STDOUT)


def ensure_models(steps: int, compress: bool) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    plain, compressed = WORK / "frozen.pth", WORK / "compressed.pth"
    if not plain.exists():
        # one system (melt, 1750 K: the data's shortest distance) keeps DeePMD-kit's neighbour statistics, which
        # compression needs, short (five systems: six minutes here)
        systems = [str(DATA / "s2-melt-1000K" / "temp-1750K")]
        (WORK / "input.json").write_text(json.dumps(training_input(steps, systems), indent=1))
        t = time.perf_counter()
        dp(["train", "input.json"], WORK, "train.log")
        dp(["freeze", "-o", plain.name], WORK, "freeze.log")
        print(f"  trained {steps} steps and froze in {time.perf_counter() - t:.0f} s", flush=True)
    models = {"plain": plain}
    if compress:
        if not compressed.exists():
            t = time.perf_counter()
            try:
                dp(["compress", "-i", plain.name, "-o", compressed.name, "-t", "input.json"], WORK, "compress.log")
                print(f"  compressed in {time.perf_counter() - t:.0f} s", flush=True)
            except subprocess.CalledProcessError:
                tail = (WORK / "compress.log").read_text().strip().splitlines()[-3:]
                print("  dp --pt compress failed: " + " | ".join(tail), flush=True)
        if compressed.exists():
            models["compressed"] = compressed
    return models


# ---------------------------------------------------------------- timing workers


def gete_box(n_atoms: int, seed: int = 0):
    """Rock-salt GeTe (a = 6.0 Å) repeated to at least n_atoms, displaced by 0.15 Å RMS (host_native.gete_box)."""
    import numpy as np
    from ase.build import bulk
    reps = int(np.ceil((n_atoms / 8) ** (1 / 3)))
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.15, seed=seed)
    return atoms


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["DP_INTER_OP_PARALLELISM_THREADS"] = "1"
    return env


def worker(args) -> None:
    """One case in this process: print one JSON line."""
    import resource
    cores = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cores)
    atoms = gete_box(args.size)
    n = len(atoms)
    if args.worker == "deepmd":
        import numpy as np
        import torch
        torch.set_num_threads(args.threads)
        from deepmd.infer import DeepPot
        dp_ = DeepPot(args.model)
        tmap = dp_.get_type_map()
        types = np.array([tmap.index(s) for s in atoms.get_chemical_symbols()])
        coord, cell = atoms.positions.reshape(1, -1), atoms.cell.array.reshape(1, 9)
        run = lambda: dp_.eval(coord, cell, types)  # noqa: E731
        extra = {"nlist": type(getattr(dp_.deep_eval, "_nlist_builder", None)).__name__,
                 "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    else:
        sys.path.insert(0, str(REPO))
        import numpy as np

        from contract import modelfile
        from contract.paths import EXAMPLE_MODEL
        from host.devices import open_device
        from host.evaluate import Evaluator
        qm = modelfile.load(EXAMPLE_MODEL)
        types = np.array([qm.config.type_map.index(s) for s in atoms.get_chemical_symbols()])
        dev = open_device("cpu", qm, threads=args.threads)
        ev = Evaluator(qm, dev, native=True)
        run = lambda: ev.compute(atoms.positions, atoms.cell.array, atoms.pbc, types)  # noqa: E731
        extra = {"device": dev.describe()}
    # TorchScript's profiling executor specializes the frozen model over its first calls: several warm-ups
    t = time.perf_counter()
    for _ in range(args.warmup):
        out = run()
    warm = time.perf_counter() - t
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
    energy = float(out[0].ravel()[0]) if args.worker == "deepmd" else float(out.energy)
    print(json.dumps({"atoms": n, "threads": args.threads, "cores": cores, "warmup_s": warm, "times_s": times,
                      "s_per_atom": statistics.median(times) / n, "best_s_per_atom": min(times) / n,
                      "energy_eV": energy, "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      **extra}))


def run_case(python: str, kind: str, model: str | None, size: int, threads: int, repeat: int,
             warmup: int) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", kind, "--size", str(size),
           "--worker-threads", str(threads), "--repeat", str(repeat), "--warmup", str(warmup)]
    cmd += ["--model", model] if model else []
    env = thread_env(threads)
    if kind == "ours":
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail), "wall_s": time.perf_counter() - t}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t
    return res


# ---------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 32768])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=3, help="timed evaluations per case, after one warm-up")
    p.add_argument("--warmup", type=int, default=3, help="untimed evaluations first (TorchScript needs 2 or more)")
    p.add_argument("--steps", type=int, default=20, help="training steps (only the timing matters)")
    p.add_argument("--deepmd-version", default="3.2.0")
    p.add_argument("--no-compress", action="store_true", help="time the plain frozen model only")
    p.add_argument("--no-cpu-device", action="store_true", help="skip our cpu device")
    p.add_argument("--fresh", action="store_true", help="remove the venv and the trained models first")
    p.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "deepmd_kit.json"))
    p.add_argument("--worker", choices=["deepmd", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.threads = args.worker_threads
        return worker(args)

    t0 = time.perf_counter()
    cores = sorted(os.sched_getaffinity(0))
    result = {"benchmark": "deepmd_kit", "cores": cores, "repeat": args.repeat, "warmup": args.warmup,
              "load_average_start": os.getloadavg(),
              "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(),
              "deepmd_version": args.deepmd_version, "activation": "tanh (ours: tanh4 in the fitting net)",
              "rows": []}
    print(f"cores this process may use: {cores}; {result['uptime_start']}", flush=True)
    if args.fresh:
        for d in (VENV, WORK):
            shutil.rmtree(d, ignore_errors=True)
    backend_ok, note = False, ""
    try:
        ensure_venv(args.deepmd_version)
        ops_ok, note = ensure_ops(args.deepmd_version)
        if not ops_ok and not args.no_compress:
            print(f"custom operators unavailable ({note}): compression impossible, plain model only", flush=True)
            args.no_compress = True
        models = ensure_models(args.steps, not args.no_compress)
        backend_ok = True
    except (subprocess.CalledProcessError, AssertionError, OSError) as e:
        note = f"{type(e).__name__}: {e}"
    result["setup_note"], result["setup_s"] = note, time.perf_counter() - t0
    if not backend_ok:
        print(f"\nDeePMD-kit's PyTorch backend could not be made to work here: {note}")
        print("Figures issue 19 quotes as measured earlier on this machine type (DeePMD-kit through LAMMPS, "
              f"not this run): compressed {QUOTED['compressed_s_per_step_per_atom']:.1e}, plain "
              f"{QUOTED['plain_s_per_step_per_atom']:.1e} s/step/atom")
        result["quoted_instead"] = QUOTED
        result["load_average_end"] = os.getloadavg()
        write(result, args.json)
        return
    result["models"] = {k: str(v) for k, v in models.items()}
    cases = [("deepmd", name, str(path), vpython()) for name, path in models.items()]
    if not args.no_cpu_device:
        cases.append(("ours", "cpu device", None, sys.executable))
    for n in args.sizes:
        for threads in args.threads:
            if threads > len(cores):
                continue
            row = {"atoms_requested": n, "threads": threads}
            for kind, name, model, python in cases:
                print(f"{n} atoms, {threads} thread(s), {name} ...", end=" ", flush=True)
                res = run_case(python, kind, model, n, threads, args.repeat, args.warmup)
                row[name] = res
                row["atoms"] = res.get("atoms", n)
                print(f"{res['s_per_atom']:.3e} s/atom ({res['wall_s']:.0f} s, peak RSS {res['peak_rss_MB']:.0f} MB)"
                      if "s_per_atom" in res else f"failed: {res['error']}", flush=True)
            ours = row.get("cpu device", {}).get("s_per_atom")
            for name in models:
                if ours and "s_per_atom" in row[name]:
                    row[f"{name}_over_cpu_device"] = row[name]["s_per_atom"] / ours
            result["rows"].append(row)
    result["load_average_end"] = os.getloadavg()
    result["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    result["total_s"] = time.perf_counter() - t0
    table(result, list(models) + ([] if args.no_cpu_device else ["cpu device"]))
    write(result, args.json)


def table(result: dict, names: list[str]) -> None:
    print(f"\nDeePMD-kit {result['deepmd_version']} (PyTorch backend, {result['setup_note']}), "
          "s/atom per evaluation (energy, forces, virial), median of "
          f"{result['repeat']}; T threads on T cores")
    head = f"{'atoms':>7} {'T':>2} " + " ".join(f"{n:>14}" for n in names)
    ratios = [k for k in result["rows"][0] if k.endswith("_over_cpu_device")] if result["rows"] else []
    print(head + "".join(f" {r.replace('_over_cpu_device', ' / cpu'):>14}" for r in ratios))
    for row in result["rows"]:
        cells = [f"{row[n]['s_per_atom']:14.3e}" if "s_per_atom" in row.get(n, {}) else f"{'failed':>14}"
                 for n in names]
        print(f"{row['atoms']:>7} {row['threads']:>2} " + " ".join(cells)
              + "".join(f" {row.get(r, float('nan')):14.1f}" for r in ratios))
    print(f"load average: start {result['load_average_start']}, end {result['load_average_end']}")


def write(result: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
