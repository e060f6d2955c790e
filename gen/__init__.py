"""dpfpga gen: the pipeline RTL generated from a model file (Amaranth)."""

import sys

# Wide ROM rows (thousands of bits) exceed Python's default int<->str conversion limit inside
# Amaranth's simulator and Verilog back end.
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)
