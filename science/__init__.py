"""dpfpga science workflows: structure analysis, per-phase accuracy, teacher-labelled melt-quench data and
one-command recipes, built on the model.

The top layer: it may import contract, model, gen, sim and host; none of them imports it.
"""
