"""cocotb bench for the generated pipeline (Icarus and Verilator).

The case file (env DPFPGA_CASE, written by sim.runner.write_case) holds the input beats (wire words)
and the NumPy reference's integers.  `PipelineTB` drives the input with a `StreamDriver` (optional
random idle cycles), takes the output with a `StreamMonitor` (optional random backpressure), decodes
the words (contract.wire) and compares energy, dE/dr_ij and flags with `==`.  The result record
(mismatches, cycles, wall time) goes to env DPFPGA_RESULT for the pytest side.

Both driver and monitor act in one coroutine per clock cycle: cocotb's per-cycle overhead, not the
simulator, limits the speed, so one `await` pair per cycle matters.
"""

from __future__ import annotations

import json
import os
import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from contract import wire


class StreamDriver:
    """Presents beats on a valid/ready input; `idle` is the probability of an idle cycle."""

    def __init__(self, valid, payload, ready, beats, lanes: int, idle: float, rng: random.Random):
        self.valid, self.payload, self.ready = valid, payload, ready
        self.words = [sum(int(w) << (wire.WORD_BITS * l) for l, w in enumerate(b)) for b in beats]
        self.lanes, self.idle, self.rng = lanes, idle, rng
        self.index = 0
        self.presenting = False

    @property
    def done(self) -> bool:
        return self.index >= len(self.words)

    def drive(self):
        # Once presented, a beat stays until taken (valid must not drop before the handshake).
        if not self.presenting:
            self.presenting = not self.done and (self.idle == 0 or self.rng.random() >= self.idle)
        self.valid.value = int(self.presenting)
        if self.presenting:
            self.payload.value = self.words[self.index]

    def sample(self):
        if self.presenting and int(self.ready.value):
            self.index += 1
            self.presenting = False


class StreamMonitor:
    """Takes beats from a valid/ready output; `backpressure` is the probability of ready = 0."""

    def __init__(self, valid, payload, ready, lanes: int, backpressure: float, rng: random.Random):
        self.valid, self.payload, self.ready = valid, payload, ready
        self.lanes, self.backpressure, self.rng = lanes, backpressure, rng
        self.beats, self.cycles_of_headers = [], []
        self.ready_now = 0

    def drive(self):
        self.ready_now = int(self.backpressure == 0 or self.rng.random() >= self.backpressure)
        self.ready.value = self.ready_now

    def sample(self, cycle: int):
        if self.ready_now and int(self.valid.value):
            v = int(self.payload.value)
            beat = [(v >> (wire.WORD_BITS * l)) & ((1 << wire.WORD_BITS) - 1) for l in range(self.lanes)]
            self.beats.append(beat)
            if wire.kind(beat[0]) == wire.HEADER:
                self.cycles_of_headers.append(cycle)


class PipelineTB:
    def __init__(self, dut, case: dict):
        self.dut, self.case = dut, case
        self.lanes = case["beats"].shape[1]
        rng = random.Random(int(case["seed"]))
        self.driver = StreamDriver(dut.i__valid, dut.i__payload, dut.i__ready, case["beats"], self.lanes,
                                   float(case["idle"]), rng)
        self.monitor = StreamMonitor(dut.o__valid, dut.o__payload, dut.o__ready, self.lanes,
                                     float(case["backpressure"]), rng)

    async def reset(self):
        self.dut.rst.value = 1
        self.dut.i__valid.value = 0
        self.dut.o__ready.value = 0
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def run(self, max_cycles: int) -> int:
        n_atoms = int(self.case["n_atoms"])
        cycle = 0
        while len(self.monitor.cycles_of_headers) < n_atoms or not self._records_complete():
            self.driver.drive()
            self.monitor.drive()
            await ReadOnly()
            self.driver.sample()
            self.monitor.sample(cycle)
            await RisingEdge(self.dut.clk)
            cycle += 1
            if cycle > max_cycles:
                raise AssertionError(f"timeout: {len(self.monitor.cycles_of_headers)}/{n_atoms} atoms after "
                                     f"{cycle} cycles (input beat {self.driver.index}/{len(self.driver.words)})")
        return cycle

    def _records_complete(self) -> bool:
        """All records of the last atom arrived (its header announces how many)."""
        beats = self.monitor.beats
        heads = [k for k, b in enumerate(beats) if wire.kind(b[0]) == wire.HEADER]
        if not heads:
            return False
        n = wire.OUTPUT_HEADER["n"].get(beats[heads[-1]][0])
        got = sum(1 for b in beats[heads[-1] + 1:] for w in b if wire.kind(w) == wire.RECORD)
        return got >= n

    def check(self) -> dict:
        case = self.case
        n_atoms, max_records = int(case["n_atoms"]), int(case["max_records"])
        energy, dEdr, flags, tags = wire.decode_results(np.array(self.monitor.beats, dtype=np.uint64), n_atoms,
                                                        max_records)
        exp_e, exp_f, exp_flags = case["energy"], case["dEdr"], case["flags"]
        return {
            "atoms": n_atoms,
            "energy_mismatches": int((energy != exp_e).sum()),
            "force_mismatches": int((dEdr != exp_f[:, :dEdr.shape[1]]).any(axis=-1).sum()),
            "flag_mismatches": int((flags != exp_flags).sum()),
            "tag_errors": int((tags != wire.tag_of(np.arange(n_atoms))).sum()),
        }


@cocotb.test()
async def pipeline_matches_reference(dut):
    case = dict(np.load(os.environ["DPFPGA_CASE"]))
    tb = PipelineTB(dut, case)
    Clock(dut.clk, 4, unit="ns").start()
    await tb.reset()
    t0 = time.time()
    beats_in = len(case["beats"])
    result_path = os.environ["DPFPGA_RESULT"]
    try:
        cycles = await tb.run(max_cycles=2000 * (beats_in + 10) + 100000)
        result = tb.check()
    except Exception as e:
        # Keep what came out for diagnosis (compare it with another simulator's beats), then fail.
        np.save(result_path + ".beats.npy", np.array(tb.monitor.beats, dtype=np.uint64))
        with open(result_path, "w") as f:
            json.dump({"error": f"{type(e).__name__}: {e}", "beats_out": len(tb.monitor.beats),
                       "mismatches": -1}, f)
        raise
    wall = time.time() - t0
    heads = tb.monitor.cycles_of_headers
    result.update({
        "cycles": cycles, "wall_seconds": wall, "cycles_per_second": cycles / wall if wall else None,
        "records_in": int((wire.kind(np.asarray(case["beats"], dtype=np.uint64)) == wire.RECORD).sum()),
        "steady_cycles_per_atom": (heads[-1] - heads[0]) / (len(heads) - 1) if len(heads) > 1 else None,
        "idle": float(case["idle"]), "backpressure": float(case["backpressure"]),
    })
    result["mismatches"] = (result["energy_mismatches"] + result["force_mismatches"] + result["flag_mismatches"]
                            + result["tag_errors"])
    if result["mismatches"]:
        np.save(result_path + ".beats.npy", np.array(tb.monitor.beats, dtype=np.uint64))
    with open(result_path, "w") as f:
        json.dump(result, f)
    assert result["mismatches"] == 0, result
