#!/usr/bin/env python3
"""Experiment (issue 21): the seed group's MDPU GeTe LAMMPS input run with our import of their NVNMD v0
hardware file, `pair_style nvnmd MODEL device DEVICE` in place of their `pair_style mdpu model.pb`.

    python examples/GeTe/experiments/nvnmd_mdpu_run.py [--model build/nvnmd/nvnmd-import.npz]
                                                       [--devices reference cpu] [--steps 100]

The input is ../shared/data/lammps-inputs/GeTe-mdpu/in.lmp, read from there (never copied): its
crd.lmp (64 atoms, rock-salt GeTe), `replicate 2 2 2` (512 atoms), its neighbour settings, velocities
(`velocity all create 300 123456789`), and the first `--steps` steps of its first stage (NVT 300 K,
dt 2 fs, tau 100 dt) with thermo every step, once per device (reference and cpu: bit-exact both, so
their thermo output must be identical).  The model file is nvnmd_accuracy.py's (it writes it).
Reported (OUT/nvnmd-mdpu-run.json, OUT/DEVICE/nvnmd-mdpu-thermo.csv): the step-0 potential energy (total and
per atom), beside the float64 evaluation of the decoded NVNMD file and the bit-exact reference (Python)
on the same 512-atom structure, and the drift of the NVT conserved quantity and the temperature over the
run.  The file has no energy shift (MDPU era): absolute energies are off by a constant per type.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples" / "GeTe"))

import structure as st  # noqa: E402
from contract import modelfile  # noqa: E402
from contract.paths import shared_data  # noqa: E402

INPUT_DIR = shared_data() / "lammps-inputs" / "GeTe-mdpu"
NVNMD_FILE = shared_data() / "nvnmd-models" / "mdpu-v0-GeTe.pb"
THERMO = ("step", "pe", "ke", "etotal", "temp", "press", "vol", "econserve")


def group_settings(text: str) -> dict:
    """What the group's in.lmp sets for its first stage; ValueError naming what is not as expected."""
    var = dict(re.findall(r"^variable\s+(\w+)\s+equal\s+(\S+)", text, re.M))
    rep = re.search(r"^replicate\s+(\d+)\s+(\d+)\s+(\d+)", text, re.M)
    vel = re.search(r"^velocity\s+all\s+create\s+\$\{(\w+)\}\s+(\d+)", text, re.M)
    nb = re.search(r"^neighbor\s+(.+)$", text, re.M)
    nm = re.search(r"^neigh_modify\s+(.+)$", text, re.M)
    fix = re.search(r"^fix\s+0\s+all\s+nvt\s+temp\s+\$\{(\w+)\}\s+\$\{(\w+)\}\s+\$\{tau\}", text, re.M)
    if not (rep and vel and nb and nm and fix) or var.get("tau") != "${dt}*100":
        raise ValueError(f"{INPUT_DIR / 'in.lmp'}: not the expected MDPU GeTe input (replicate, velocity, neighbor, "
                         "neigh_modify, fix 0 nvt, tau = dt*100)")
    dt = float(var["dt"])
    return {"replicate": [int(x) for x in rep.groups()], "temp": float(var[vel.group(1)]), "seed": int(vel.group(2)),
            "dt": dt, "tau": 100 * dt, "t_start": float(var[fix.group(1)]), "t_stop": float(var[fix.group(2)]),
            "neighbor": nb.group(1).strip(), "neigh_modify": nm.group(1).strip()}


def read_crd(path: Path):
    """crd.lmp (atom_style atomic, orthogonal box): positions, types 0-based, cell."""
    lines = path.read_text().splitlines()
    box, atoms, k = {}, [], 0
    while k < len(lines):
        s = lines[k].split("#")[0].split()
        if len(s) == 4 and s[2].endswith("lo") and s[3].endswith("hi"):
            box[s[2][0]] = (float(s[0]), float(s[1]))
        if s[:1] == ["Atoms"]:
            k += 1
            while k < len(lines) and not lines[k].split():
                k += 1
            while k < len(lines) and lines[k].split():
                f = lines[k].split()
                atoms.append((int(f[0]), int(f[1]), *map(float, f[2:5])))
                k += 1
            break
        k += 1
    atoms.sort()
    cell = np.diag([box[a][1] - box[a][0] for a in "xyz"])
    return np.array([a[2:] for a in atoms]), np.array([a[1] - 1 for a in atoms]), cell


def lammps_input(model: Path, device: str, g: dict, steps: int) -> str:
    return f"""# written by examples/GeTe/experiments/nvnmd_mdpu_run.py: the first {steps} steps of the first stage of
# {INPUT_DIR / 'in.lmp'} (pair_style mdpu model.pb -> our import of that file)
units           metal
boundary        p p p
atom_style      atomic
neighbor        {g['neighbor']}
neigh_modify    {g['neigh_modify']}
read_data       {INPUT_DIR / 'crd.lmp'}
replicate       {' '.join(map(str, g['replicate']))}
pair_style      nvnmd {model.resolve()} device {device}
pair_coeff      * * Ge Te
velocity        all create {g['temp']} {g['seed']}
timestep        {g['dt']}
thermo_style    custom {' '.join(THERMO)}
thermo          1
thermo_modify   flush yes
fix             0 all nvt temp {g['t_start']} {g['t_stop']} {g['tau']}
print "STAGE 1/1 s1-crystal-300K, first {steps} steps: {steps} steps"
run             {steps}
print "STAGE done"
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "build" / "nvnmd" / "nvnmd-import.npz"))
    ap.add_argument("--devices", nargs="+", default=["reference", "cpu"],
                    help="one run per device (reference: the NumPy reference in the service; cpu: in-process); "
                         "their thermo output must be identical")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--out", default=str(REPO / "build" / "nvnmd" / "mdpu-run"))
    args = ap.parse_args(argv)
    from model.data import System
    from model.metrics import predict_quantized
    from model.nvnmd import NvnmdModel, read_nvnmd
    from model.nvnmd import predict as nvnmd_predict
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model)
    qm = modelfile.load(model)  # refuses a damaged file before LAMMPS starts
    g = group_settings((INPUT_DIR / "in.lmp").read_text())

    # the step-0 structure: crd.lmp replicated as LAMMPS replicates it (same positions, another order)
    pos, types, cell = read_crd(INPUT_DIR / "crd.lmp")
    nx, ny, nz = g["replicate"]
    shifts = np.array([[i, j, k] for i in range(nx) for j in range(ny) for k in range(nz)]) @ cell
    pos = (pos[None] + shifts[:, None]).reshape(-1, 3)
    types = np.tile(types, len(shifts))
    cell = cell * np.array([nx, ny, nz])[:, None]
    g["natoms"] = len(types)
    system = System(name="GeTe-mdpu", type_map=["Ge", "Te"], types=types, coords=pos[None], cells=cell[None], pbc=True)
    e_nvnmd, _, _ = nvnmd_predict(NvnmdModel(read_nvnmd(NVNMD_FILE)), system, 0)
    e_ref, _, _ = predict_quantized(qm, system, 0)

    n = len(types)
    runs = {dev: run_device(out / dev, model, dev, g, args.steps, args.timeout) for dev in args.devices}
    first = runs[args.devices[0]]
    pe0 = first["rows"][0]["pe"]
    report = {
        "command": "python examples/GeTe/experiments/nvnmd_mdpu_run.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "input": str(INPUT_DIR / "in.lmp"), "settings": g, "model": str(model.resolve()), "model_hash": qm.hash,
        "source": qm.provenance.get("import", {}).get("source"), "natoms": n,
        "step0": {"pe_eV": pe0, "pe_eV_per_atom": pe0 / n,
                  "reference_python_eV": e_ref, "nvnmd_float64_eV": e_nvnmd,
                  "nvnmd_float64_eV_per_atom": e_nvnmd / n,
                  "lammps_minus_nvnmd_float_meV_per_atom": (pe0 - e_nvnmd) / n * 1e3,
                  "lammps_minus_reference_eV": pe0 - e_ref},
        "devices": {dev: {k: v for k, v in r.items() if k != "rows"} for dev, r in runs.items()},
        # the devices compute the same integers: the same thermo output, digit for digit
        "identical_thermo": all(r["rows"] == first["rows"] for r in runs.values()),
        "energy_note": "no energy shift in the MDPU-era file: absolute energies are off by a constant per type",
    }
    (out / "nvnmd-mdpu-run.json").write_text(json.dumps(report, indent=1))
    s0 = report["step0"]
    print(f"step 0: pe {pe0:.6f} eV ({pe0 / n:.6f} eV/atom); NVNMD float64 {e_nvnmd:.6f} eV "
          f"({e_nvnmd / n:.6f} eV/atom); reference (Python) {e_ref:.6f} eV; LAMMPS - reference "
          f"{s0['lammps_minus_reference_eV']:.2e} eV")
    for dev, r in report["devices"].items():
        print(f"device {dev}: {r['steps']} steps, econserve drift max {r['econserve']['max_abs_drift_meV_per_atom']:.4f} "
              f"meV/atom, T mean {r['temperature_K']['mean']:.1f} K [{r['temperature_K']['min']:.1f}, "
              f"{r['temperature_K']['max']:.1f}], loop {r['loop_s']:.1f} s")
    print(f"devices {list(runs)}: identical thermo output: {report['identical_thermo']}")
    print(f"wrote {out / 'nvnmd-mdpu-run.json'}, {out}/<device>/nvnmd-mdpu-thermo.csv")


def run_device(out: Path, model: Path, device: str, g: dict, steps: int, timeout: float) -> dict:
    """One LAMMPS run in `out`: its thermo rows (also as CSV), conserved-quantity drift, temperatures."""
    from host.lammps_plugin import console_script
    out.mkdir(parents=True, exist_ok=True)
    (out / "in.nvnmd-mdpu").write_text(lammps_input(model, device, g, steps))
    cmd = [console_script("lmp"), "-in", "in.nvnmd-mdpu", "-log", "log.nvnmd-mdpu.lammps"]
    t0 = time.time()
    run = st.run_lammps(cmd, out, timeout, "lammps-nvnmd-mdpu.out", ("log.nvnmd-mdpu.lammps",))
    wall = time.time() - t0
    rows, header, loop_s = [], None, 0.0
    for line in (out / "log.nvnmd-mdpu.lammps").read_text(errors="replace").splitlines():
        s = line.split()
        if s[:1] == ["Step"]:  # LAMMPS's own column names (PotEng, ...): ours are thermo_style's, in order
            header = list(THERMO) if len(s) == len(THERMO) else None
            continue
        if s[:2] == ["Loop", "time"]:
            loop_s += float(s[3])
            header = None
        elif header and len(s) == len(header):
            try:
                rows.append(dict(zip(header, map(float, s))))
            except ValueError:
                header = None
    if not rows or rows[0]["step"] != 0:
        raise RuntimeError(f"no thermo rows from step 0 in {out / 'log.nvnmd-mdpu.lammps'}")
    with open(out / "nvnmd-mdpu-thermo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(THERMO)
        for r in rows:
            w.writerow([int(r["step"])] + [repr(r[k]) for k in THERMO[1:]])
    n = g["natoms"]
    econ = np.array([r["econserve"] for r in rows])
    temp = np.array([r["temp"] for r in rows])
    return {"rows": rows, "steps": int(rows[-1]["step"]), "wall_s": wall, "loop_s": loop_s, "lammps": run,
            "econserve": {"first_eV": float(econ[0]), "last_eV": float(econ[-1]),
                          "max_abs_drift_meV_per_atom": float(np.abs(econ - econ[0]).max() / n * 1e3),
                          "drift_last_meV_per_atom": float((econ[-1] - econ[0]) / n * 1e3)},
            "temperature_K": {"mean": float(temp.mean()), "min": float(temp.min()), "max": float(temp.max()),
                              "last": float(temp[-1])}}


if __name__ == "__main__":
    main()
