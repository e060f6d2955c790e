"""RecordFramer: wire words in -> per-atom beats of record slots, with the stream checks.

Input: beats of `lanes` 64-bit words (contract.wire).  Output: beats of record slots, one atom after the
other, `last` on each atom's final beat (an atom without records is one empty `last` beat).
Checks, matching the reference's flags:

* centre type or a record type outside the type map: BAD_TYPE (the records still flow, with type 0,
  and the atom engine zeroes the atom's results);
* more records of a type than sel[t]: NEIGHBOR_OVERFLOW, known at the atom's last beat;
* count above sum(sel): NEIGHBOR_OVERFLOW, the records are consumed and dropped (the record buffer
  holds sum(sel)), and the atom leaves with n = 0;
* a header before `count` records arrived: MALFORMED, the atom ends there (n = records received)
  and the new header starts the next atom; record words outside any atom, or beyond `count`:
  MALFORMED on the next (or current) atom, the extra words dropped.

Output is registered: latency 1, one beat per cycle.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from contract.flags import FLAG_BAD_TYPE, FLAG_MALFORMED, FLAG_NEIGHBOR_OVERFLOW
from contract.wire import COUNT_BITS, HEADER, INPUT_AXES, INPUT_HEADER, INPUT_RECORD, RECORD, WORD_BITS

from .. import layouts
from ..fixed import any_of, tree_sum
from ..words import field, kind


def word_beat_layout(design):
    return data.ArrayLayout(WORD_BITS, design.knobs.lanes)


class RecordFramer(wiring.Component):
    def __init__(self, design):
        self.design = design
        super().__init__({"i": In(stream.Signature(word_beat_layout(design))),
                          "o": Out(stream.Signature(design.beat_layout(layouts.record_slot(design))))})

    def elaborate(self, platform):
        m = Module()
        d = self.design
        cfg, lanes = d.cfg, d.knobs.lanes
        nt = cfg.ntypes
        words = self.i.payload
        kinds = [kind(words[l]) for l in range(lanes)]
        is_header = kinds[0] == HEADER

        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        out = self.o.payload

        atom = Signal(d.atom_layout())  # the atom being framed (flags accumulate)
        remaining = Signal(signed(COUNT_BITS + 2))
        received = Signal(COUNT_BITS)
        counts = [Signal(COUNT_BITS + 1, name=f"count{t}") for t in range(nt)]
        pending_malformed = Signal()

        # -- record words of this beat ------------------------------------------------------------
        is_rec = [kinds[l] == RECORD for l in range(lanes)]
        # slot l is inside the atom if fewer than `remaining` record words precede it
        before = [Const(0)]
        for l in range(lanes):
            before.append(before[-1] + is_rec[l])
        take = [is_rec[l] & (before[l] < remaining) for l in range(lanes)]
        n_take = before[lanes]  # may exceed remaining: the excess is dropped and flagged
        n_used = Mux(n_take > remaining, remaining, n_take)
        extra = n_take > remaining
        rtype = [field(words[l], INPUT_RECORD["type"]) for l in range(lanes)]
        bad_rec = any_of(take[l] & (rtype[l] >= nt) for l in range(lanes))
        beat_counts = [tree_sum((take[l] & (rtype[l] == t)).as_unsigned() for l in range(lanes)) for t in range(nt)]
        type_over = any_of((counts[t] + beat_counts[t]) > cfg.sel[t] for t in range(nt))
        ends = n_take >= remaining

        def emit(slots_valid, last, flags, n):
            m.d.sync += [self.o.valid.eq(1), out.last.eq(last), out.atom.tag.eq(atom.tag),
                         out.atom.ctype.eq(atom.ctype), out.atom.n.eq(n), out.atom.flags.eq(flags)]
            for l in range(lanes):
                s = out.slots[l]
                m.d.sync += [s.valid.eq(slots_valid[l]), s.type.eq(Mux(rtype[l] < nt, rtype[l], 0))]
                for a in range(3):
                    m.d.sync += s.d[a].eq(field(words[l], INPUT_AXES[a]))

        with m.If(advance):
            m.d.sync += self.o.valid.eq(0)
        m.d.comb += self.i.ready.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(advance):
                    m.d.comb += self.i.ready.eq(1)
                with m.If(advance & self.i.valid):
                    with m.If(is_header):
                        h = words[0]
                        ctype, count, tag = (field(h, INPUT_HEADER[n]) for n in ("ctype", "count", "tag"))
                        bad = ctype >= nt
                        over = count > d.sel_total
                        flags = (Mux(bad, FLAG_BAD_TYPE, 0) | Mux(over, FLAG_NEIGHBOR_OVERFLOW, 0)
                                 | Mux(pending_malformed, FLAG_MALFORMED, 0))
                        m.d.sync += [atom.tag.eq(tag), atom.ctype.eq(Mux(bad, 0, ctype)), atom.n.eq(0),
                                     atom.flags.eq(flags), remaining.eq(count), received.eq(0),
                                     pending_malformed.eq(0)] + [c.eq(0) for c in counts]
                        with m.If(count == 0):
                            m.next = "EMPTY"
                        with m.Elif(over):
                            m.next = "DISCARD"
                        with m.Else():
                            m.next = "RECORDS"
                    with m.Elif(any_of(is_rec)):
                        m.d.sync += pending_malformed.eq(1)
            with m.State("RECORDS"):
                with m.If(advance & self.i.valid):
                    with m.If(is_header):
                        # early header: close this atom, keep the header for IDLE
                        m.d.sync += atom.flags.eq(atom.flags | FLAG_MALFORMED)
                        m.next = "EMPTY"
                    with m.Else():
                        m.d.comb += self.i.ready.eq(1)
                        flags = (atom.flags | Mux(bad_rec, FLAG_BAD_TYPE, 0)
                                 | Mux(ends & type_over, FLAG_NEIGHBOR_OVERFLOW, 0) | Mux(extra, FLAG_MALFORMED, 0))
                        emit(take, ends, flags, received + n_used)
                        m.d.sync += [atom.flags.eq(flags), remaining.eq(remaining - n_used),
                                     received.eq(received + n_used)]
                        for t in range(nt):
                            m.d.sync += counts[t].eq(counts[t] + beat_counts[t])
                        with m.If(ends):
                            m.next = "IDLE"
            with m.State("DISCARD"):
                with m.If(advance & self.i.valid):
                    with m.If(is_header):
                        m.d.sync += atom.flags.eq(atom.flags | FLAG_MALFORMED)
                        m.next = "EMPTY"
                    with m.Else():
                        m.d.comb += self.i.ready.eq(1)
                        m.d.sync += [remaining.eq(remaining - n_used),
                                     atom.flags.eq(atom.flags | Mux(extra, FLAG_MALFORMED, 0))]
                        with m.If(ends):
                            m.next = "EMPTY"
            with m.State("EMPTY"):
                with m.If(advance):
                    emit([Const(0)] * lanes, Const(1), atom.flags, received)
                    m.next = "IDLE"
        return m


