"""AXI4-Stream adapters between the XDMA's 512-bit channels and the pipeline's word streams.

The XDMA (PCIe Gen3 x16, 512-bit user interface at 250 MHz) moves 8 wire words per AXI beat, byte 0
of a transfer in tdata[7:0], so word k of a beat is tdata[64k+63:64k], exactly the little-endian
order in which the host writes its (beats, lanes) uint64 arrays.  The pipeline takes `lanes` words per
beat (contract.wire); `lanes` must divide 8, so one AXI beat is R = 8 / lanes pipeline beats.

Both adapters keep the valid/ready rules of both sides (a valid beat holds its payload until taken,
never depends on ready) and run at full rate: one AXI beat per R cycles on the h2c side (the pipeline
takes one beat per cycle), one AXI beat per R pipeline beats on the c2h side.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from contract.wire import WORD_BITS

AXIS_BITS = 512
WORDS_PER_AXIS = AXIS_BITS // WORD_BITS
WORD_BYTES = WORD_BITS // 8


class AXIStreamSignature(wiring.Signature):
    """AXI4-Stream, master's view: tdata, tkeep (one bit per byte), tlast, tvalid; tready from the slave."""

    def __init__(self, data_bits: int = AXIS_BITS):
        super().__init__({"tdata": Out(data_bits), "tkeep": Out(data_bits // 8), "tlast": Out(1),
                          "tvalid": Out(1), "tready": In(1)})


def beat_layout(lanes: int) -> data.ArrayLayout:
    """A pipeline beat: `lanes` 64-bit wire words (gen.stages.record_framer.word_beat_layout)."""
    return data.ArrayLayout(WORD_BITS, lanes)


def _check_lanes(lanes: int) -> int:
    if lanes < 1 or WORDS_PER_AXIS % lanes:
        raise ValueError(f"lanes={lanes} must divide {WORDS_PER_AXIS} (wire words per {AXIS_BITS}-bit XDMA beat)")
    return WORDS_PER_AXIS // lanes


class H2CAdapter(wiring.Component):
    """Host to card: 512-bit AXI4-Stream in (`axis`, from XDMA m_axis_h2c) -> pipeline beats out (`o`).

    Each AXI beat is held in a register and sent as R = 8 / lanes pipeline beats, lowest words first.

    Partial beats (TKEEP): a 64-bit word is passed on only when all 8 of its TKEEP bits are set.  A
    word with none set is absent: a pipeline beat none of whose words is present is not sent at all,
    and once no later word of the AXI beat is present the beat is finished (XDMA keeps TKEEP contiguous
    from bit 0, only the last beat of a transfer is partial, so that beat costs ceil(words / lanes)
    cycles, not R).  A word with only some TKEEP bits set (a transfer that is not a multiple of 8 bytes:
    the host never sends one) is replaced by a PAD word (zero, ignored by the framer) and `partial`
    pulses for one cycle; a missing record then shows as MALFORMED in that atom's flags.  A present
    word in a beat with absent words is sent with PAD in the absent slots.  TLAST is ignored: the wire
    format frames atoms by itself, so a host transfer may end anywhere between beats.

    `enable` low back-pressures h2c (TREADY low) between AXI beats; a beat already taken is finished.

    Latency: a word taken at cycle t is on `o` from t+1.  TREADY depends combinationally on `o.ready`
    (so that the last pipeline beat of an AXI beat and the next AXI beat move in the same cycle).
    """

    def __init__(self, lanes: int):
        self.lanes, self.ratio = lanes, _check_lanes(lanes)
        super().__init__({"axis": In(AXIStreamSignature()), "o": Out(stream.Signature(beat_layout(lanes))),
                          "enable": In(1), "partial": Out(1)})

    def elaborate(self, platform):
        m = Module()
        lanes, ratio = self.lanes, self.ratio
        sub_keep_bits = lanes * WORD_BYTES

        buf_data, buf_keep = Signal(AXIS_BITS), Signal(AXIS_BITS // 8)
        held = Signal()
        k = Signal(range(ratio))  # the pipeline beat of the held AXI beat now on `o`

        words = [buf_data.word_select(k, lanes * WORD_BITS)[WORD_BITS * l:WORD_BITS * (l + 1)] for l in range(lanes)]
        keep = buf_keep.word_select(k, sub_keep_bits)
        present = [keep[WORD_BYTES * l:WORD_BYTES * (l + 1)] == 0xFF for l in range(lanes)]
        any_present = Cat(*present).any()
        # no word of a later pipeline beat present: this one finishes the AXI beat
        rest_absent = Array([buf_keep[(j + 1) * sub_keep_bits:] == 0 if j < ratio - 1 else Const(1)
                             for j in range(ratio)])[k]

        for l in range(lanes):
            m.d.comb += self.o.payload[l].eq(words[l] & present[l].replicate(WORD_BITS))
        m.d.comb += self.o.valid.eq(held & any_present)
        step = held & (~any_present | self.o.ready)  # this pipeline beat is sent (or skipped) now
        finish = step & rest_absent
        m.d.comb += self.axis.tready.eq(self.enable & (~held | finish))

        with m.If(self.axis.tvalid & self.axis.tready):
            m.d.sync += [buf_data.eq(self.axis.tdata), buf_keep.eq(self.axis.tkeep), held.eq(1), k.eq(0)]
        with m.Elif(finish):
            m.d.sync += [held.eq(0), k.eq(0)]
        with m.Elif(step):
            m.d.sync += k.eq(k + 1)

        # A word with some but not all TKEEP bits: flagged as the beat is taken.
        bytes_ = [self.axis.tkeep[WORD_BYTES * w:WORD_BYTES * (w + 1)] for w in range(WORDS_PER_AXIS)]
        torn = Cat(*[b.any() & ~b.all() for b in bytes_]).any()
        m.d.sync += self.partial.eq(self.axis.tvalid & self.axis.tready & torn)
        return m


class C2HAdapter(wiring.Component):
    """Card to host: pipeline beats in (`i`) -> 512-bit AXI4-Stream out (`axis`, to XDMA s_axis_c2h).

    Words are packed in order, R = 8 / lanes pipeline beats per AXI beat.  A full AXI beat leaves when
    the pipeline offers the beat after it (TLAST 0; the new pipeline beat goes into the emptied buffer in
    the same cycle, so a busy pipeline is never stalled by the packing).  When the pipeline has had
    nothing to send for `flush_cycles` consecutive cycles, the words held leave as one beat with TLAST 1
    and TKEEP covering only them (a partial beat: whole 64-bit words, 8 TKEEP bits each, from bit 0).
    The XDMA ends the host's c2h read() at TLAST, so results never wait in the card for more output;
    beats are never empty (TKEEP 0 is not sent).  Once a TLAST beat is offered its TDATA/TKEEP/TLAST hold
    until TREADY, as AXI4-Stream requires.

    Backpressure: TREADY low stops the buffer and, through `i.ready`, the pipeline.  `i.ready` depends
    combinationally on TREADY when the buffer is full.  Latency: a pipeline beat taken at cycle t is in
    an AXI beat at t+1 at the earliest (t+1+flush_cycles when it is the last output for a while).
    """

    def __init__(self, lanes: int, flush_cycles: int = 32):
        self.lanes, self.ratio = lanes, _check_lanes(lanes)
        if flush_cycles < 1:
            raise ValueError("flush_cycles must be >= 1")
        self.flush_cycles = flush_cycles
        super().__init__({"i": In(stream.Signature(beat_layout(lanes))), "axis": Out(AXIStreamSignature())})

    def elaborate(self, platform):
        m = Module()
        lanes, ratio = self.lanes, self.ratio
        slot_bits = lanes * WORD_BITS
        slots = [Signal(slot_bits, name=f"slot{j}") for j in range(ratio)]
        fill = Signal(range(ratio + 1))  # pipeline beats held
        flushing = Signal()  # the held words are offered as a TLAST beat
        idle = Signal(range(self.flush_cycles + 1))  # cycles without an offered pipeline beat

        full = fill == ratio
        m.d.comb += [self.axis.tdata.eq(Cat(*slots)), self.axis.tlast.eq(flushing),
                     self.axis.tvalid.eq(flushing | (full & self.i.valid))]
        for j in range(ratio):
            m.d.comb += self.axis.tkeep[j * lanes * WORD_BYTES:(j + 1) * lanes * WORD_BYTES].eq(
                (fill > j).replicate(lanes * WORD_BYTES))
        take = self.axis.tvalid & self.axis.tready
        m.d.comb += self.i.ready.eq((~flushing & ~full) | take)
        accept = self.i.valid & self.i.ready

        with m.If(take):
            m.d.sync += [flushing.eq(0), fill.eq(accept)]
            with m.If(accept):
                m.d.sync += slots[0].eq(self.i.payload.as_value())
        with m.Elif(accept):
            m.d.sync += fill.eq(fill + 1)
            with m.Switch(fill):
                for j in range(ratio):
                    with m.Case(j):
                        m.d.sync += slots[j].eq(self.i.payload.as_value())

        # Idle timer: counts while words are held and the pipeline offers nothing (never while a full
        # beat waits on TREADY with the next pipeline beat offered: TLAST must not change then).
        with m.If(accept | (fill == 0) | flushing | self.i.valid):
            m.d.sync += idle.eq(0)
        with m.Else():
            m.d.sync += idle.eq(idle + 1)
            with m.If(idle == self.flush_cycles - 1):
                m.d.sync += [flushing.eq(1), idle.eq(0)]
        return m
