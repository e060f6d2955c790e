"""StreamMonitor: counters and flags for the register block, from watching the pipeline's two streams.

It only looks (its stream ports are all inputs): a beat counts when valid and ready are both high.

    ATOMS_IN    HEADER words in the beats the pipeline takes (contract.wire: a header sits in slot 0)
    RECORDS_IN  RECORD words in the beats the pipeline takes
    ATOMS_OUT   HEADER words in the beats the pipeline sends
    RECORDS_OUT RECORD words in the beats the pipeline sends
    FLAGS       sticky OR of the `flags` of every result HEADER word, and SATURATED for every result
                RECORD word with `saturated` set: the atom flags of contract.wire, OR-ed over all atoms
    busy        ATOMS_IN != ATOMS_OUT (an atom dropped by the framer still sends its header, n = 0)

Counters wrap at 2**32, exactly as the card simulator (sim/xdma_card.py) counts on the same words.
Latency: a beat's contribution is visible on the outputs one cycle after its handshake.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from contract.flags import FLAG_BITS, FLAG_SATURATED
from contract.wire import HEADER, OUTPUT_HEADER, OUTPUT_RECORD, RECORD

from ..fixed import tree_sum
from ..words import field, kind
from .axis import beat_layout

COUNTER_BITS = 32


class TapSignature(wiring.Signature):
    """A stream as seen by an observer: payload, valid and ready all inputs to it."""

    def __init__(self, lanes: int):
        super().__init__({"payload": Out(beat_layout(lanes)), "valid": Out(1), "ready": Out(1)})


class StreamMonitor(wiring.Component):
    """Interface: `h2c`, `c2h` (In(TapSignature)): the pipeline's input and output streams;
    outputs `atoms_in`, `records_in`, `atoms_out`, `records_out` (32 bits), `flags` (FLAG_BITS, sticky),
    `busy`.  Clear everything with a reset (the shell's soft reset wraps it in a ResetInserter)."""

    def __init__(self, lanes: int):
        self.lanes = lanes
        super().__init__({"h2c": In(TapSignature(lanes)), "c2h": In(TapSignature(lanes)),
                          "atoms_in": Out(COUNTER_BITS), "records_in": Out(COUNTER_BITS),
                          "atoms_out": Out(COUNTER_BITS), "records_out": Out(COUNTER_BITS),
                          "flags": Out(FLAG_BITS), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes

        def kinds(tap, code):
            return [kind(tap.payload[l]) == code for l in range(lanes)]

        def count(tap, code, counter):
            with m.If(tap.valid & tap.ready):
                m.d.sync += counter.eq(counter + tree_sum(k.as_unsigned() for k in kinds(tap, code)))

        count(self.h2c, HEADER, self.atoms_in)
        count(self.h2c, RECORD, self.records_in)
        count(self.c2h, HEADER, self.atoms_out)
        count(self.c2h, RECORD, self.records_out)

        beat_flags = 0
        for l in range(lanes):
            word = self.c2h.payload[l]
            is_head, is_rec = kind(word) == HEADER, kind(word) == RECORD
            beat_flags = (beat_flags | (field(word, OUTPUT_HEADER["flags"]) & is_head.replicate(FLAG_BITS))
                          | ((is_rec & field(word, OUTPUT_RECORD["saturated"])) * FLAG_SATURATED))
        with m.If(self.c2h.valid & self.c2h.ready):
            m.d.sync += self.flags.eq(self.flags | beat_flags)
        m.d.comb += self.busy.eq(self.atoms_in != self.atoms_out)
        return m
