"""The contract: every rule that more than one layer (or language) must agree on, defined once.

Fixed-point arithmetic (`fixedpoint`), the model's hyper-parameters (`config`), the model file
(`modelfile`) and where the bundled models and the shared data are (`paths`), the per-atom flags
(`flags`), the wire format as one field table (`wire`), the PCIe shell's register map
(`registers`) and the device service's protocol (`protocol`); `headers` generates the C/C++ headers
that other languages compile against.  This package imports nothing else of the project: every
other package builds on it (the order is enforced by tests/test_layers.py).
"""
