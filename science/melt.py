"""The main job on the bundled example: melt rock-salt GeTe through LAMMPS with the quantized model on
this machine's CPU (`pair_style nvnmd ... device cpu`, the fixed-point pipeline in C++, bit-exact with
the NumPy reference), measure the liquid's g(r) against AIMD at the same temperature, and time it
against the NumPy reference device.

    python -m science melt                      # 4,096 atoms, 1,000 steps (2 ps): a minute or two
    python -m science melt --cells 4 --steps 200 --threads 1 -o build/melt-small

Protocol (NVT, Nose-Hoover, 2 fs): the crystal at the AIMD density (a = 6.194 Å, 29.7 Å^3/atom) heated
300 -> 2000 K over the first quarter of the steps, held at 2000 K (it melts), cooled to 1200 K, then
sampled at 1200 K over the last quarter.  ZBL inside 1.8 Å keeps hot pairs from meeting below the
model's r_min (`below_rmin allow`), as examples/GeTe/in.melt-quench does.

The liquid's total and partial g(r) are compared with those of the 40 AIMD frames at 1200 K
(`GeTe-aimd/216atom-melt-quench/s2-melt-1000K/temp-1200K` in ../shared/data), both measured with
science.analysis.  Then the same box runs a few steps with the NumPy reference device, and the two
s/step/atom are printed side by side.  Outputs in --out (default build/melt): melt.json (figures,
protocol, timings), melt-rdf.png (over the AIMD curves), melt-rdf.csv, the LAMMPS input, log and
trajectory.  Without the shared data the g(r) is still measured and plotted, and the comparison is said
to be left out.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


from contract.paths import EXAMPLE_MODEL

AIMD_LIQUID = "GeTe-aimd/216atom-melt-quench/s2-melt-1000K/temp-1200K"
LATTICE = 6.194  # Å: rock salt at the AIMD density
LOOP_RE = re.compile(r"^Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms")
STAGE_RE = re.compile(r"^STAGE (\d+)/(\d+) (.*)$")


@dataclass
class Protocol:
    cells: int = 8          # rock-salt cells along each axis (8 atoms each): 8 -> 4,096 atoms
    steps: int = 1000       # all four stages together
    seed: int = 20261207
    every: int = 25         # dump interval while sampling

    @property
    def atoms(self) -> int:
        return 8 * self.cells ** 3

    def stages(self) -> list[tuple[str, int, float, float]]:
        """(name, steps, T start, T end) of the four stages: a quarter of the steps each."""
        q = max(self.steps // 4, 1)
        return [("heat 300 -> 2000 K", q, 300.0, 2000.0), ("melt 2000 K", q, 2000.0, 2000.0),
                ("cool 2000 -> 1200 K", q, 2000.0, 1200.0), ("sample liquid 1200 K", q, 1200.0, 1200.0)]


def crystal_lines(cells: int) -> list[str]:
    """LAMMPS lines of rock-salt GeTe at the AIMD density, `cells` cubic cells (8 atoms each) a side: Ge is
    type 1, Te type 2."""
    return [
        "units metal", "atom_style atomic", "boundary p p p",
        f"lattice custom {LATTICE} a1 1 0 0 a2 0 1 0 a3 0 0 1 &",
        "  basis 0.0 0.0 0.0 basis 0.5 0.5 0.0 basis 0.5 0.0 0.5 basis 0.0 0.5 0.5 &",
        "  basis 0.5 0.0 0.0 basis 0.0 0.5 0.0 basis 0.0 0.0 0.5 basis 0.5 0.5 0.5",
        f"region box block 0 {cells} 0 {cells} 0 {cells}", "create_box 2 box",
        "create_atoms 1 box basis 5 2 basis 6 2 basis 7 2 basis 8 2",
        "mass 1 72.630", "mass 2 127.60",
    ]


def lammps_input(p: Protocol, model: Path, device: str, steps_override: int | None = None) -> str:
    """The LAMMPS input: the crystal, the model through `device`, then the stages (or, with
    steps_override, `run 0` and that many steps at 300 K: the timing of another device)."""
    lines = crystal_lines(p.cells) + [
        f"pair_style hybrid/overlay nvnmd {model} device {device} below_rmin allow zbl 1.2 1.8",
        "pair_coeff * * nvnmd Ge Te", "pair_coeff 1 1 zbl 32 32", "pair_coeff 1 2 zbl 32 52",
        "pair_coeff 2 2 zbl 52 52",
        "timestep 0.002",
        # loop geom: the same velocities on any number of ranks
        f"velocity all create 300.0 {p.seed} dist gaussian mom yes rot yes loop geom",
        "thermo_style custom step temp pe etotal press", "thermo_modify flush yes",
    ]
    if steps_override is not None:
        lines += ["thermo 1", "fix nvt all nvt temp 300.0 300.0 0.2", "run 0", f"run {steps_override}"]
        return "\n".join(lines) + "\n"
    stages = p.stages()
    lines.append(f"thermo {max(p.steps // 40, 1)}")
    for k, (name, n, t0, t1) in enumerate(stages, 1):
        lines.append(f'print "STAGE {k}/{len(stages)} {name}: {n} steps"')
        lines.append(f"fix nvt all nvt temp {t0} {t1} 0.2")
        if k == len(stages):
            # at least 8 frames of the stage, its first included
            every = max(min(p.every, n // 8), 1)
            lines += ["reset_timestep 0",
                      f"dump liquid all custom {every} liquid.lammpstrj id type element x y z",
                      "dump_modify liquid element Ge Te sort id"]
        lines += [f"run {n}", "unfix nvt"]
    return "\n".join(lines) + "\n"


def is_thermo(line: str) -> bool:
    """A thermo row of these inputs: step temp pe etotal press, all numbers."""
    fields = line.split()
    try:
        return len(fields) == 5 and fields[0].isdigit() and all(float(f) == float(f) for f in fields[1:])
    except ValueError:
        return False


def run_lammps(text: str, out: Path, name: str, progress_steps: int = 0, timeout: float = 3600.0,
               on_line=None) -> list[tuple]:
    """Run LAMMPS on `text` in `out` (input NAME.in, log NAME.log, screen NAME.out); a tqdm bar over the
    thermo steps when progress_steps is given; on_line(line, pid), if given, sees every output line.
    Returns the (seconds, procs, steps, atoms) of every `run`.  A failed run raises RuntimeError with
    LAMMPS's ERROR line, and so does one still running after `timeout` s, which is killed."""
    from tqdm import tqdm

    from host.lammps_plugin import console_script
    (out / f"{name}.in").write_text(text)
    cmd = [console_script("lmp"), "-in", f"{name}.in", "-log", f"{name}.log"]
    loops, last_error = [], ""
    bar = tqdm(total=progress_steps, unit="step", desc=name, disable=not progress_steps)
    with open(out / f"{name}.out", "w") as screen:
        proc = subprocess.Popen(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1, start_new_session=True)
        # A LAMMPS that stops printing is stopped all the same: a timer kills its process group (the `lmp`
        # console script and the binary it runs, which holds the pipe).
        watchdog = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        watchdog.start()
        offset = last = 0  # thermo steps restart at 0 after reset_timestep: count on from the last one
        for line in proc.stdout:
            screen.write(line)
            s = line.strip()
            if on_line:
                on_line(s, proc.pid)
            if m := LOOP_RE.match(s):
                loops.append((float(m[1]), int(m[2]), int(m[3]), int(m[4])))
            elif m := STAGE_RE.match(s):
                bar.set_description(f"{name}: {m[3]}")
            elif s.startswith("ERROR"):
                last_error = s
            elif progress_steps and is_thermo(s):
                step = int(s.split()[0])
                if step < last:
                    offset += last
                last = step
                bar.n = min(offset + step, progress_steps)
                bar.refresh()
        rc = proc.wait()
        timed_out = not watchdog.is_alive()
        watchdog.cancel()
    bar.close()
    if timed_out:
        raise RuntimeError(f"LAMMPS ran past {timeout:.0f} s and was stopped; see {out / (name + '.out')}")
    if rc != 0:
        raise RuntimeError(f"LAMMPS failed ({last_error or f'exit status {rc}'}); see {out / (name + '.out')}")
    return loops


def per_step_atom(loops: list[tuple]) -> float:
    """s/step/atom over the runs with steps (the `run 0` setup left out)."""
    runs = [r for r in loops if r[2] > 0]
    return sum(r[0] for r in runs) / max(sum(r[2] for r in runs), 1) / runs[0][3]


def main_job(out: Path, p: Protocol, model: Path = EXAMPLE_MODEL, threads: int = 0, reference_steps: int = 3,
             shared: Path | None = None) -> dict:
    from model.data import load_deepmd
    from science import analysis as an

    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" + (f" threads {threads}" if threads else "")
    print(f"melt: {p.atoms} GeTe atoms, {p.steps} steps of 2 fs through LAMMPS, device cpu "
          f"({threads or 'all allowed'} thread(s)); outputs in {out}", flush=True)
    t0 = time.monotonic()
    loops = run_lammps(lammps_input(p, model, device), out, "melt", progress_steps=p.steps)
    cpu = per_step_atom(loops)
    wall = time.monotonic() - t0

    print(f"melt: the same box, {reference_steps} steps with the NumPy reference device (for the timing)",
          flush=True)
    ref_loops = run_lammps(lammps_input(p, model, "reference", steps_override=reference_steps), out, "reference")
    ref = per_step_atom(ref_loops)

    frames = list(an.read_frames(out / "liquid.lammpstrj"))
    g = an.rdf(frames)
    shared = shared if shared is not None else an.default_reference_folder().parent
    aimd = shared / AIMD_LIQUID
    reference, note = None, ""
    if (aimd / "type.raw").exists():
        g_aimd = an.rdf(an.frames_from_system(load_deepmd(aimd)))
        reference = an.Reference(folder=aimd, rdf={n: (g_aimd.r, g_aimd.curve(n)) for n in ["total", *g_aimd.partials]})
    else:
        note = f"AIMD frames not found at {aimd}: g(r) not compared"
    comparison = an.compare_rdf(g, reference)
    an.write_rdf_csv(out / "melt-rdf.csv", g)
    an.plot_rdf(out / "melt-rdf.png", g, reference, title=f"liquid GeTe at 1200 K: {p.atoms} atoms, device cpu",
                label="dpfpga cpu device", reference_label="AIMD 1200 K (216 atoms, 40 frames)")
    result = {
        "atoms": p.atoms, "steps": p.steps, "timestep_ps": 0.002, "stages": p.stages(), "seed": p.seed,
        "model": str(model), "device": device, "wall_s": wall,
        "s_per_step_atom": {"cpu": cpu, "reference": ref}, "reference_steps": reference_steps,
        "speedup_vs_reference": ref / cpu, "frames": len(frames), "rdf": comparison,
        "aimd": str(aimd) if reference else None, "note": note,
    }
    (out / "melt.json").write_text(json.dumps(result, indent=1, default=float))
    total = comparison["total"]
    print(f"\nliquid GeTe, 1200 K, {p.atoms} atoms, {len(frames)} frames:")
    if reference is not None:
        print(f"  g(r) first peak {total['first_peak']['position']:.2f} Å (AIMD "
              f"{total['reference_first_peak']['position']:.2f} Å), rms difference over 2-8 Å {total['rms']:.3f}")
    else:
        print(f"  g(r) first peak {total['first_peak']['position']:.2f} Å; {note}")
    print(f"  s/step/atom through LAMMPS: cpu device {cpu:.3g}, NumPy reference device {ref:.3g} "
          f"({ref / cpu:.1f}x)")
    print(f"  {out / 'melt-rdf.png'}, {out / 'melt.json'}")
    return result
