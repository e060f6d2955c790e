"""A platform-independent self-check top: on-chip stimulus in, on-chip comparison out.

    input ROM (wire beats of a few atoms) ──► Pipeline ──► compare with the expected-beat ROM
                                                              │
                                  pass, fail, done, one `atom_ok` bit (LED) per result atom

The stimulus is made by the host's own rules (`stimulus`): neighbour blocks from
`model.assembly.neighbor_blocks`, displacements quantized by `model.assembly.quantize_displacements`
and encoded by `contract.wire.encode_atoms`, as `host.evaluate.Evaluator` does; the expected output
beats come from `model.reference.process_beats` (what the `reference` device answers: the NumPy
reference behind the same wire format).  The structure is a few atoms of a GeTe AIMD
frame (../shared/data/GeTe-aimd/216atom-melt-quench) when that data is present, else a generated
rock-salt GeTe-like crystal with seeded random displacements.

The check runs once after reset (press the reset button to run it again):

* every input beat is offered in order (valid held until ready);
* the output stream is always ready; every output beat is compared, all `lanes` words, with the next
  expected beat: any difference sets `fail` and clears that atom's `atom_ok`; a beat beyond the
  expected ones sets `fail` too;
* `done` rises when the last expected beat has arrived, or when nothing moved on either stream for
  `timeout` cycles (then `timed_out` and `fail` are set too);
* `passed` = done and not fail; `atom_ok[k]` = atom k's beats have all arrived and all matched;
* `cycles` counts clock cycles from the end of reset to `done`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from contract import wire

from . import cycles
from .ir import Design
from .pipeline import Pipeline

#: GeTe AIMD frames used for the stimulus when ../shared/data is next to the checkout.
GETE_FRAME = Path("GeTe-aimd") / "216atom-melt-quench" / "s3-quench-300K" / "temp-300K"


@dataclass
class Stimulus:
    beats: np.ndarray       # (n_in, lanes) uint64: input wire beats
    expected: np.ndarray    # (n_out, lanes) uint64: the reference device's output beats
    n_atoms: int
    counts: np.ndarray      # (n_atoms,) records per atom
    centers: np.ndarray     # (n_atoms,) atom indices in the structure
    source: str             # where the structure came from

    def atom_of_beat(self) -> np.ndarray:
        """Result atom of each expected beat (cut at header beats)."""
        heads = wire.kind(self.expected[:, 0]) == wire.HEADER
        return np.cumsum(heads) - 1

    def flipped(self, beat: int, bit: int) -> "Stimulus":
        """A copy with one expected bit inverted (for tests that must see the check fail)."""
        exp = self.expected.copy()
        exp[beat, bit // 64] ^= np.uint64(1 << (bit % 64))
        return Stimulus(self.beats, exp, self.n_atoms, self.counts, self.centers, self.source)


def _shared_data() -> Path:
    import os
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("DPFPGA_SHARED_DATA", repo.parent / "shared" / "data"))


def structure(type_map, frame: int = 0, seed: int = 0):
    """(positions, cell, types, source): a GeTe AIMD frame if present, else a generated crystal."""
    path = _shared_data() / GETE_FRAME
    if path.exists() and {"Ge", "Te"} <= set(type_map):
        from model.data import load_deepmd
        s = load_deepmd(path).remap_types(list(type_map))
        return s.coords[frame], s.cells[frame], np.asarray(s.types), f"{path} frame {frame}"
    # Rock-salt GeTe-like crystal, 3x3x3 conventional cells (216 atoms), a = 6.0 Å, 0.1 Å jitter.
    rng = np.random.default_rng(seed)
    a, n = 6.0, 3
    basis = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    cells = np.array([[i, j, k] for i in range(n) for j in range(n) for k in range(n)], dtype=float)
    ge = (cells[:, None, :] + basis[None]).reshape(-1, 3)
    te = ge + 0.5
    pos = np.concatenate([ge, te]) * a + rng.normal(scale=0.1, size=(2 * len(ge), 3))
    types = np.concatenate([np.zeros(len(ge), int), np.ones(len(te), int) % len(type_map)])
    return pos, np.eye(3) * a * n, types, f"generated rock-salt crystal (216 atoms, seed {seed})"


def stimulus(qm, lanes: int = 1, n_atoms: int = 2, frame: int = 0, max_records: int | None = None) -> Stimulus:
    """Input beats of `n_atoms` centre atoms and the reference device's output beats for them.

    max_records: keep only each atom's first records (nearest-first is not implied: host order), to
    keep simulations short; None keeps every neighbour inside rcut (what a real run sends)."""
    from model.assembly import neighbor_blocks, quantize_displacements
    from model.reference import process_beats

    pos, cell, types, source = structure(qm.config.type_map, frame)
    if len(types) < n_atoms:
        raise ValueError(f"the structure has {len(types)} atoms, fewer than {n_atoms}")
    b = neighbor_blocks(qm, pos, cell, True, types)
    keep = slice(0, n_atoms)
    nbr_type, nbr_vec = b.nbr_type[keep].copy(), b.nbr_vec[keep]
    if max_records is not None:
        nbr_type[:, max_records:] = -1
    centers = np.arange(n_atoms)
    d = quantize_displacements(nbr_vec, qm.formats["coord"], np.broadcast_to(centers[:, None], nbr_type.shape))
    d[nbr_type < 0] = 0
    beats = wire.encode_atoms(b.center_type[keep], nbr_type, d, lanes, tags=centers)
    expected = process_beats(qm, beats, n_atoms, lanes)
    return Stimulus(beats, np.asarray(expected, dtype=np.uint64), n_atoms, (nbr_type >= 0).sum(axis=1),
                    centers, source)


def _pack(beats: np.ndarray) -> list[int]:
    return [sum(int(w) << (64 * lane) for lane, w in enumerate(b)) for b in beats]


class SelfCheckTop(wiring.Component):
    """The pipeline between a stimulus ROM and a checker (module docstring).  Runs once after reset."""

    def __init__(self, design: Design, stim: Stimulus, timeout: int | None = None):
        self.design, self.stim = design, stim
        n = stim.n_atoms
        if timeout is None:
            shape = cycles.shape_of(design)
            timeout = 4 * cycles.latency_cycles(int(max(stim.counts.max(initial=0), 1)), design.knobs, shape) + 256
        self.timeout = timeout
        super().__init__({"passed": Out(1), "failed": Out(1), "done": Out(1), "timed_out": Out(1),
                          "atom_ok": Out(n), "cycles": Out(32)})

    def elaborate(self, platform):
        m = Module()
        stim, lanes = self.stim, self.design.knobs.lanes
        n_in, n_out, n_atoms = len(stim.beats), len(stim.expected), stim.n_atoms
        atom_of = stim.atom_of_beat()
        last_beat = [int(np.flatnonzero(atom_of == k).max()) for k in range(n_atoms)]

        m.submodules.pipeline = pipe = Pipeline(self.design)
        m.submodules.stim_rom = in_rom = Memory(shape=64 * lanes, depth=n_in, init=_pack(stim.beats))
        m.submodules.expect_rom = exp_rom = Memory(shape=64 * lanes, depth=n_out, init=_pack(stim.expected))
        m.submodules.atom_rom = atom_rom = Memory(shape=range(max(n_atoms, 2)), depth=n_out,
                                                  init=[int(a) for a in atom_of])
        in_rp = in_rom.read_port(domain="comb")
        exp_rp = exp_rom.read_port(domain="comb")
        atom_rp = atom_rom.read_port(domain="comb")

        in_idx = Signal(range(n_in + 1))
        out_idx = Signal(range(n_out + 1))
        fail = Signal()
        bad = Signal(n_atoms)
        idle = Signal(range(self.timeout + 1))
        timed_out = Signal()
        done = Signal()
        m.d.comb += done.eq((out_idx == n_out) | timed_out)

        # Stimulus.
        m.d.comb += [in_rp.addr.eq(in_idx),
                     pipe.i.valid.eq((in_idx < n_in) & ~done),
                     pipe.i.payload.eq(in_rp.data)]
        with m.If(pipe.i.valid & pipe.i.ready):
            m.d.sync += in_idx.eq(in_idx + 1)

        # Checker.
        m.d.comb += [pipe.o.ready.eq(1), exp_rp.addr.eq(out_idx), atom_rp.addr.eq(out_idx)]
        with m.If(pipe.o.valid):
            with m.If(out_idx < n_out):
                m.d.sync += out_idx.eq(out_idx + 1)
                with m.If(pipe.o.payload.as_value() != exp_rp.data):
                    m.d.sync += [fail.eq(1), bad.bit_select(atom_rp.data, 1).eq(1)]
            with m.Else():
                m.d.sync += fail.eq(1)  # more output than expected

        # Watchdog: nothing moved on either stream for `timeout` cycles.
        moved = (pipe.i.valid & pipe.i.ready) | pipe.o.valid
        with m.If(~done):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(moved):
                m.d.sync += idle.eq(0)
            with m.Elif(idle == self.timeout):
                m.d.sync += [timed_out.eq(1), fail.eq(1)]
            with m.Else():
                m.d.sync += idle.eq(idle + 1)

        m.d.comb += [self.done.eq(done), self.failed.eq(fail), self.passed.eq(done & ~fail),
                     self.timed_out.eq(timed_out)]
        for k in range(n_atoms):
            m.d.comb += self.atom_ok[k].eq((out_idx > last_beat[k]) & ~bad[k])
        return m


def simulate(top: SelfCheckTop, max_cycles: int = 200000) -> dict:
    """Run the self-check in Amaranth's simulator until `done`; returns its outputs."""
    from amaranth.sim import Simulator
    result = {}

    async def bench(ctx):
        for _ in range(max_cycles):
            await ctx.tick()
            if ctx.get(top.done):
                break
        await ctx.tick()  # one more cycle: a beat beyond the expected ones would show here
        result.update(done=ctx.get(top.done), passed=ctx.get(top.passed), failed=ctx.get(top.failed),
                      timed_out=ctx.get(top.timed_out), atom_ok=ctx.get(top.atom_ok), cycles=ctx.get(top.cycles))

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result
