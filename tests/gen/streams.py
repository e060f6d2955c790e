"""Amaranth-simulator stream driver and monitor for the stage unit tests.

`run_stream` feeds `beats` into `dut.<i>` (each beat: a callable that sets the payload through ctx,
or an int for a plain payload), optionally inserting random idle cycles, and collects `n_out` payloads
from `dut.<o>` under optional random backpressure.  Returns (payloads, cycles, arrival cycle of each
payload).
"""

from __future__ import annotations

import random
import sys

from amaranth.sim import Simulator

sys.set_int_max_str_digits(0)


def _raw(payload):
    return payload.as_value() if hasattr(payload, "as_value") else payload


def run_stream(dut, beats, n_out, idle=0.0, backpressure=0.0, seed=0, i="i", o="o", max_cycles=200000,
               done=None, raw=True):
    """raw=True: payloads are set and returned as plain integers (the layout's bits)."""
    src, snk = getattr(dut, i), getattr(dut, o)
    out, arrivals = [], []
    rng = random.Random(seed)
    state = {"cycles": 0}

    async def driver(ctx):
        for beat in beats:
            while idle and rng.random() < idle:
                ctx.set(src.valid, 0)
                await ctx.tick()
            ctx.set(src.valid, 1)
            if callable(beat):
                beat(ctx, src.payload)
            else:
                ctx.set(_raw(src.payload), beat)
            await ctx.tick().until(src.ready)
        ctx.set(src.valid, 0)

    async def monitor(ctx):
        rng2 = random.Random(seed + 1)
        while len(out) < n_out and not (done and done(out)):
            ready = 0 if backpressure and rng2.random() < backpressure else 1
            ctx.set(snk.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(snk.valid, _raw(snk.payload) if raw else snk.payload)
            state["cycles"] += 1
            if valid and ready:
                out.append(payload)
                arrivals.append(state["cycles"])
            if state["cycles"] > max_cycles:
                raise AssertionError(f"timeout after {max_cycles} cycles with {len(out)}/{n_out} outputs")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver, background=True)
    sim.add_testbench(monitor)
    sim.run()
    return out, state["cycles"], arrivals
