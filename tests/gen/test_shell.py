"""The vu9p PCIe shell (gen/shell/) in the Amaranth simulator, with integer checks against Python models.

* RegisterBlock: AXI4-Lite reads and writes (AW before W, W before AW, together), byte strobes,
  constants, self-clearing CONTROL.reset, unmapped and out-of-map offsets (read as zero, writes
  ignored, OKAY), writes to read-only registers ignored.
* H2CAdapter / C2HAdapter: random word streams through each adapter, without stalls, with idle
  input cycles and with output backpressure; words compared with a model, TKEEP/TLAST rules checked
  every cycle (a valid beat never changes until it is taken).
* Shell with a loopback in place of the pipeline: counters and FLAGS read over AXI4-Lite against a
  model of the words that crossed, CONTROL.enable gating and the soft reset.
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from contract import registers as rm
from contract import wire
from contract.flags import FLAG_SATURATED, FLAGS
from contract.registers import shell_registers
from gen.shell.axis import C2HAdapter, H2CAdapter, WORDS_PER_AXIS
from gen.shell.registers import RegisterBlock
from gen.shell.top import Shell

HASH = "0123456789abcdef" * 4
MODES = {"nostall": (0.0, 0.0), "idle": (0.4, 0.0), "backpressure": (0.0, 0.4)}
MASK64 = (1 << 64) - 1


def run(dut, bench):
    """Run `bench` (bounded loops) to its end; the clock is a background process."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


# ---- AXI4-Lite master -------------------------------------------------------------------------------

async def axil_write(ctx, bus, addr, data, strb=0xF, order="together", gap=0):
    """One write; AW and W either together or one `gap` cycles before the other.  Returns BRESP."""
    first, second = {"together": ((bus.awvalid, bus.wvalid), ()), "aw_first": ((bus.awvalid,), (bus.wvalid,)),
                     "w_first": ((bus.wvalid,), (bus.awvalid,))}[order]
    ctx.set(bus.awaddr, addr)
    ctx.set(bus.wdata, data)
    ctx.set(bus.wstrb, strb)
    for s in first:
        ctx.set(s, 1)
    for _ in range(gap if second else 0):
        _, _, ready = await ctx.tick().sample(bus.awready)
        assert not ready, "AWREADY before WVALID: the slave must wait for both"
    for s in second:
        ctx.set(s, 1)
    await ctx.tick().until(bus.awready & bus.wready)
    ctx.set(bus.awvalid, 0)
    ctx.set(bus.wvalid, 0)
    ctx.set(bus.bready, 1)
    (resp,) = await ctx.tick().sample(bus.bresp).until(bus.bvalid)
    ctx.set(bus.bready, 0)
    return resp


async def axil_read(ctx, bus, addr):
    """One read: (RDATA, RRESP)."""
    ctx.set(bus.araddr, addr)
    ctx.set(bus.arvalid, 1)
    await ctx.tick().until(bus.arready)
    ctx.set(bus.arvalid, 0)
    ctx.set(bus.rready, 1)
    data, resp = await ctx.tick().sample(bus.rdata, bus.rresp).until(bus.rvalid)  # until(): the samples only
    ctx.set(bus.rready, 0)
    return data, resp


# ---- register block ---------------------------------------------------------------------------------

def test_register_block_reads_writes_and_bad_addresses():
    regs = shell_registers(lanes=2, model_hash=HASH)
    dut = RegisterBlock(regs)
    bus = dut.bus
    seen = {}

    async def bench(ctx):
        ctx.set(dut.status, 0x5)
        ctx.set(dut.atoms_in, 0xDEADBEEF)
        ctx.set(dut.records_out, 7)
        seen["magic"] = await axil_read(ctx, bus, 0x00)
        seen["version"] = await axil_read(ctx, bus, 0x04)
        seen["lanes"] = await axil_read(ctx, bus, 0x08)
        seen["hash"] = [(await axil_read(ctx, bus, 0x40 + 4 * k))[0] for k in range(8)]
        seen["status"] = await axil_read(ctx, bus, 0x10)
        seen["atoms_in"] = await axil_read(ctx, bus, 0x18)
        seen["records_out"] = await axil_read(ctx, bus, 0x24)
        # writes: AW/W in every order, then byte strobes
        seen["w1"] = await axil_write(ctx, bus, 0x0C, 0x1, order="aw_first", gap=3)
        seen["control1"] = (await axil_read(ctx, bus, 0x0C), ctx.get(dut.control))
        seen["w2"] = await axil_write(ctx, bus, 0x0C, 0xA5A5A500, strb=0b0110, order="w_first", gap=2)
        seen["control2"] = await axil_read(ctx, bus, 0x0C)
        await axil_write(ctx, bus, 0x0C, 0x0)
        # self-clearing reset bit: high for exactly one cycle after the write
        await axil_write(ctx, bus, 0x0C, 0x3)
        seen["reset_after"] = ctx.get(dut.control)
        seen["control3"] = await axil_read(ctx, bus, 0x0C)
        # read-only, unmapped and out-of-map addresses
        seen["w_ro"] = await axil_write(ctx, bus, 0x00, 0x12345678)
        seen["magic2"] = await axil_read(ctx, bus, 0x00)
        seen["w_hole"] = await axil_write(ctx, bus, 0x30, 0xFFFFFFFF)
        seen["hole"] = await axil_read(ctx, bus, 0x30)
        seen["beyond"] = await axil_read(ctx, bus, 0x1000)  # 4 KiB + 0: aliases MAGIC if undecoded
        seen["far"] = await axil_read(ctx, bus, 0x8000_000C)
        seen["w_far"] = await axil_write(ctx, bus, 0x1000 + 0x0C, 0x1)
        seen["control4"] = await axil_read(ctx, bus, 0x0C)

    run(dut, bench)
    assert seen["magic"] == (rm.SHELL_MAGIC, 0)
    assert seen["version"] == (1, 0) and seen["lanes"] == (2, 0)
    assert seen["hash"] == rm.hash_words(HASH)
    assert seen["status"] == (0x5, 0) and seen["atoms_in"] == (0xDEADBEEF, 0) and seen["records_out"] == (7, 0)
    assert seen["w1"] == 0 and seen["control1"] == ((0x1, 0), 0x1)
    assert seen["w2"] == 0 and seen["control2"] == (0x00A5A501, 0)  # bytes 1 and 2 written, 0 and 3 kept
    assert seen["reset_after"] == 0x1  # the write's cycle + 1: reset already cleared, enable kept
    assert seen["control3"] == (0x1, 0)
    assert seen["w_ro"] == 0 and seen["magic2"] == (rm.SHELL_MAGIC, 0)
    assert seen["w_hole"] == 0 and seen["hole"] == (0, 0)
    assert seen["beyond"] == (0, 0) and seen["far"] == (0, 0)
    assert seen["w_far"] == 0 and seen["control4"] == (0x1, 0)


def test_reset_bit_is_a_one_cycle_pulse():
    regs = shell_registers(lanes=1, model_hash=HASH)
    dut = RegisterBlock(regs)
    trace = []

    async def bench(ctx):
        bus = dut.bus
        ctx.set(bus.awaddr, 0x0C)
        ctx.set(bus.wdata, 0x2)
        ctx.set(bus.wstrb, 0xF)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wvalid, 1)
        ctx.set(bus.bready, 1)
        await ctx.tick()
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        for _ in range(4):
            trace.append(ctx.get(dut.control))
            await ctx.tick()

    run(dut, bench)
    assert trace == [0x2, 0, 0, 0]


def test_regmap_comes_from_the_register_description():
    regs = shell_registers(lanes=4, model_hash=HASH)
    m = regs.regmap()
    again = rm.RegisterMap.from_json(m.to_json())
    assert [r.to_dict() for r in again] == [r.to_dict() for r in m]
    for r in regs:
        assert m.offset(r.name) == r.offset and m[r.name].access == r.access
        assert m[r.name].bits == {f.name: f.bit for f in r.fields}
    # the host's built-in map is the gateware's, and its FLAGS bits are contract.flags'
    assert rm.RegisterMap.default().to_dict() == m.to_dict()
    assert m["FLAGS"].bits == {name: mask.bit_length() - 1 for mask, name, _ in FLAGS}
    for name in rm.REQUIRED:
        assert name in m
    for name, fields in rm.REQUIRED_BITS.items():
        assert set(fields) <= set(m[name].bits)


# ---- stream adapters ------------------------------------------------------------------------------

def random_axis_beats(rng, n, torn=False):
    """n beats of (words[8], tkeep): full beats, some transfer ends (partial, contiguous), optionally a
    torn word (some of its 8 TKEEP bits)."""
    beats = []
    for k in range(n):
        words = [rng.getrandbits(64) for _ in range(WORDS_PER_AXIS)]
        nwords = WORDS_PER_AXIS if rng.random() < 0.7 else rng.randrange(1, WORDS_PER_AXIS)
        keep = (1 << (8 * nwords)) - 1
        if torn and k % 5 == 2:
            w = rng.randrange(WORDS_PER_AXIS)
            keep = (keep & ~(0xFF << 8 * w)) | (rng.choice([0x0F, 0x01, 0x7F]) << 8 * w)
        beats.append((words, keep))
    return beats


def h2c_model(beats, lanes):
    """Pipeline beats the H2C adapter must produce, and the number of beats with a torn word."""
    out, torn = [], 0
    for words, keep in beats:
        wkeep = [(keep >> (8 * w)) & 0xFF for w in range(WORDS_PER_AXIS)]
        torn += any(k not in (0, 0xFF) for k in wkeep)
        for j in range(WORDS_PER_AXIS // lanes):
            sub = range(j * lanes, (j + 1) * lanes)
            if any(wkeep[w] == 0xFF for w in sub):
                out.append(tuple(words[w] if wkeep[w] == 0xFF else 0 for w in sub))
    return out, torn


def pack(words):
    return sum(w << (64 * k) for k, w in enumerate(words))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lanes", [1, 2, 8])
@pytest.mark.parametrize("seed", [1, 2])
def test_h2c_adapter(seed, lanes, mode):
    idle, backpressure = MODES[mode]
    rng = random.Random(seed * 100 + lanes)
    beats = random_axis_beats(rng, 24, torn=True)
    want, torn = h2c_model(beats, lanes)
    dut = H2CAdapter(lanes)
    got, pulses = [], [0]

    async def bench(ctx):
        ctx.set(dut.enable, 1)
        k, held_payload = 0, None
        for cycle in range(20000):
            if k < len(beats) and rng.random() >= idle:
                ctx.set(dut.axis.tvalid, 1)
                ctx.set(dut.axis.tdata, pack(beats[k][0]))
                ctx.set(dut.axis.tkeep, beats[k][1])
                ctx.set(dut.axis.tlast, k % 3 == 2)
            else:
                ctx.set(dut.axis.tvalid, 0)
            ready = int(rng.random() >= backpressure)
            ctx.set(dut.o.ready, ready)
            valid = ctx.get(dut.o.valid)
            payload = tuple(ctx.get(dut.o.payload[l]) for l in range(lanes))
            if held_payload is not None:  # a valid beat not taken must not change
                assert valid and payload == held_payload, f"cycle {cycle}: output changed before ready"
            held_payload = payload if valid and not ready else None
            if valid and ready:
                got.append(payload)
            if ctx.get(dut.axis.tvalid) and ctx.get(dut.axis.tready):
                k += 1
            pulses[0] += ctx.get(dut.partial)
            await ctx.tick()
            if k == len(beats) and len(got) == len(want):
                break
        for _ in range(3):
            pulses[0] += ctx.get(dut.partial)
            await ctx.tick()

    run(dut, bench)
    assert got == want
    assert pulses[0] == torn > 0


def test_h2c_enable_holds_off_the_host():
    dut = H2CAdapter(2)
    trace = []

    async def bench(ctx):
        ctx.set(dut.axis.tvalid, 1)
        ctx.set(dut.axis.tkeep, (1 << 64) - 1)
        ctx.set(dut.o.ready, 1)
        for cycle in range(6):
            ctx.set(dut.enable, int(cycle >= 3))
            trace.append((ctx.get(dut.axis.tready), ctx.get(dut.o.valid)))
            await ctx.tick()

    run(dut, bench)
    assert trace[:3] == [(0, 0)] * 3 and trace[3] == (1, 0) and trace[4][1] == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lanes", [1, 2, 8])
@pytest.mark.parametrize("seed", [1, 2])
def test_c2h_adapter(seed, lanes, mode):
    idle, backpressure = MODES[mode]
    flush = 4
    rng = random.Random(seed * 1000 + lanes)
    n = 40
    beats = [tuple(rng.getrandbits(64) for _ in range(lanes)) for _ in range(n)]
    pauses = {rng.randrange(n): rng.randrange(1, 3 * flush) for _ in range(4)}  # long gaps force flushes
    dut = C2HAdapter(lanes, flush_cycles=flush)
    out = []

    async def bench(ctx):
        k, pause, held, pending = 0, 0, None, False
        for cycle in range(20000):
            if pause == 0 and k in pauses:
                pause = pauses.pop(k)
            # stream rule for the source: a beat once offered stays offered until taken
            offer = pending or (k < n and pause == 0 and rng.random() >= idle)
            if pause:
                pause -= 1
            ctx.set(dut.i.valid, int(offer))
            if offer:
                for l in range(lanes):
                    ctx.set(dut.i.payload[l], beats[k][l])
            ready = int(rng.random() >= backpressure)
            ctx.set(dut.axis.tready, ready)
            tv = ctx.get(dut.axis.tvalid)
            beat = (ctx.get(dut.axis.tdata), ctx.get(dut.axis.tkeep), ctx.get(dut.axis.tlast))
            if held is not None:
                assert tv and beat == held, f"cycle {cycle}: AXI beat changed before TREADY"
            held = beat if tv and not ready else None
            if tv and ready:
                out.append(beat)
            taken = offer and ctx.get(dut.i.ready)
            pending = offer and not taken
            if taken:
                k += 1
            await ctx.tick()
            if k == n and sum(bin(kp).count("1") for _, kp, _ in out) == 8 * lanes * n:
                break

    run(dut, bench)
    words = []
    for data, keep, last in out:
        nwords = bin(keep).count("1") // 8
        assert keep == (1 << (8 * nwords)) - 1 and nwords % lanes == 0 and nwords > 0, hex(keep)
        assert last or nwords == WORDS_PER_AXIS, "a partial beat must end a transfer (TLAST)"
        words += [(data >> (64 * w)) & MASK64 for w in range(nwords)]
    assert words == [w for b in beats for w in b]
    assert out[-1][2] == 1, "the last output must be flushed with TLAST"


# ---- the shell, pipeline replaced by a loopback -------------------------------------------------

class Loopback(wiring.Component):
    """Shell with pipe_i wired to pipe_o: every word the pipeline takes comes straight back."""

    def __init__(self, lanes):
        self.shell = Shell(lanes, HASH, flush_cycles=4)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.shell = self.shell
        wiring.connect(m, self.shell.pipe_i, self.shell.pipe_o)
        return m


def word_stream(rng, n):
    """Random wire words of every kind: headers with flag bits, records with and without `saturated`, PAD."""
    out = []
    for _ in range(n):
        kind = rng.choice([wire.PAD, wire.HEADER, wire.RECORD, wire.RECORD, wire.RECORD, 3])
        out.append((kind << wire.KIND.lo) | rng.getrandbits(wire.KIND.lo))
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lanes", [1, 4])
@pytest.mark.parametrize("seed", [7])
def test_shell_counters_and_flags(seed, lanes, mode):
    idle, backpressure = MODES[mode]
    rng = random.Random(seed + lanes)
    words = word_stream(rng, 8 * 12)
    beats = [(words[8 * b:8 * b + 8], (1 << 64) - 1) for b in range(12)]
    top = Loopback(lanes)
    sh, regs = top.shell, top.shell.regmap
    res = {}

    async def bench(ctx):
        bus = sh.axil
        # not enabled: h2c is held off
        ctx.set(sh.h2c.tvalid, 1)
        res["tready_disabled"] = ctx.get(sh.h2c.tready)
        ctx.set(sh.h2c.tvalid, 0)
        await axil_write(ctx, bus, regs.offset("CONTROL"), regs.bit("CONTROL", "enable"))
        k, out = 0, []
        for _ in range(5000):
            if k < len(beats) and rng.random() >= idle:
                ctx.set(sh.h2c.tvalid, 1)
                ctx.set(sh.h2c.tdata, pack(beats[k][0]))
                ctx.set(sh.h2c.tkeep, beats[k][1])
            else:
                ctx.set(sh.h2c.tvalid, 0)
            ready = int(rng.random() >= backpressure)
            ctx.set(sh.c2h.tready, ready)
            if ctx.get(sh.c2h.tvalid) and ready:
                data, keep = ctx.get(sh.c2h.tdata), ctx.get(sh.c2h.tkeep)
                out += [(data >> (64 * w)) & MASK64 for w in range(bin(keep).count("1") // 8)]
            if ctx.get(sh.h2c.tvalid) and ctx.get(sh.h2c.tready):
                k += 1
            await ctx.tick()
            if len(out) == len(words):
                break
        ctx.set(sh.h2c.tvalid, 0)
        ctx.set(sh.c2h.tready, 1)
        res["out"] = out
        res["regs"] = {name: (await axil_read(ctx, bus, regs.offset(name)))[0]
                       for name in ("STATUS", "FLAGS", "ATOMS_IN", "ATOMS_OUT", "RECORDS_IN", "RECORDS_OUT")}
        await axil_write(ctx, bus, regs.offset("CONTROL"), regs.bit("CONTROL", "reset"))
        res["after_reset"] = {name: (await axil_read(ctx, bus, regs.offset(name)))[0]
                              for name in ("CONTROL", "STATUS", "FLAGS", "ATOMS_IN", "RECORDS_OUT")}

    run(top, bench)
    kinds = [wire.kind(w) for w in words]
    flags = 0
    for w, kd in zip(words, kinds):
        if kd == wire.HEADER:
            flags |= wire.OUTPUT_HEADER["flags"].get(w)
        elif kd == wire.RECORD and wire.OUTPUT_RECORD["saturated"].get(w):
            flags |= FLAG_SATURATED
    assert res["tready_disabled"] == 0
    assert res["out"] == words
    r = res["regs"]
    assert r["ATOMS_IN"] == r["ATOMS_OUT"] == kinds.count(wire.HEADER) > 0
    assert r["RECORDS_IN"] == r["RECORDS_OUT"] == kinds.count(wire.RECORD) > 0
    assert r["FLAGS"] == flags != 0
    assert r["STATUS"] == 0  # nothing in flight, no error
    assert res["after_reset"] == {"CONTROL": 0, "STATUS": 0, "FLAGS": 0, "ATOMS_IN": 0, "RECORDS_OUT": 0}


def test_shell_flags_torn_tkeep_as_error():
    top = Loopback(2)
    sh, regs = top.shell, top.shell.regmap
    res = {}

    async def bench(ctx):
        await axil_write(ctx, sh.axil, regs.offset("CONTROL"), regs.bit("CONTROL", "enable"))
        ctx.set(sh.c2h.tready, 1)
        ctx.set(sh.h2c.tvalid, 1)
        ctx.set(sh.h2c.tdata, pack([wire.INPUT_RECORD.kind_bits | k for k in range(8)]))
        ctx.set(sh.h2c.tkeep, 0x0FFF)  # word 0 whole, word 1 torn (4 of 8 bytes)
        await ctx.tick().until(sh.h2c.tready)
        ctx.set(sh.h2c.tvalid, 0)
        for _ in range(20):
            await ctx.tick()
        res["status"] = (await axil_read(ctx, sh.axil, regs.offset("STATUS")))[0]
        res["records"] = (await axil_read(ctx, sh.axil, regs.offset("RECORDS_IN")))[0]
        await axil_write(ctx, sh.axil, regs.offset("CONTROL"), regs.bit("CONTROL", "reset"))
        res["status_after"] = (await axil_read(ctx, sh.axil, regs.offset("STATUS")))[0]

    run(top, bench)
    assert res["status"] == regs.bit("STATUS", "error") | regs.bit("STATUS", "partial")
    assert res["records"] == 1  # the torn word went in as PAD
    assert res["status_after"] == 0


def test_architecture_doc_has_the_generated_address_map():
    from pathlib import Path

    from contract.registers import markdown_table
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text()
    assert markdown_table(shell_registers(lanes=1, model_hash=HASH)) in doc
