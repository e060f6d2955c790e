"""Per-atom status flags: one bit mask that the reference computes, the pipeline sends with each atom
(output header bits 39:32), the PCIe shell ORs into its FLAGS register and the host checks.

The first four are the physics' (model.reference sets them); MALFORMED is the stream's: records
missing or extra in the input, which only the hardware (and the devices that model it) can see.
"""

from __future__ import annotations

FLAG_NEIGHBOR_OVERFLOW = 1  #: more records of some type than sel: results zeroed
FLAG_SATURATED = 2  #: some fixed-point value was clipped to its format's range
FLAG_R_BELOW_MIN = 4  #: some pair was closer than the tables' r_min (s, h held at their r_min values)
FLAG_BAD_TYPE = 8  #: centre or neighbour type outside the model's type map: results zeroed
FLAG_MALFORMED = 16  #: the stream, not the physics, was wrong (extra or missing records)

#: Width of the flags field on the wire and in the shell's FLAGS register.
FLAG_BITS = 8

#: (bit mask, register field name, description), in bit order: the one list every consumer reads.
FLAGS = (
    (FLAG_NEIGHBOR_OVERFLOW, "neighbor_overflow", "neighbour count above sel"),
    (FLAG_SATURATED, "saturated", "fixed-point saturation"),
    (FLAG_R_BELOW_MIN, "r_below_min", "pair distance below the table's r_min"),
    (FLAG_BAD_TYPE, "bad_type", "type outside the type map"),
    (FLAG_MALFORMED, "malformed", "records missing or extra in the input stream"),
)
FLAG_NAMES = {bit: text for bit, _, text in FLAGS}


def describe_flags(flags: int) -> str:
    """'neighbour count above sel, fixed-point saturation' for a mask; 'none' for 0."""
    return ", ".join(name for bit, name in FLAG_NAMES.items() if flags & bit) or "none"
