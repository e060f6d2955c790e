"""The PCIe shell of the vu9p platform: XDMA black box, AXI4-Stream adapters, AXI4-Lite registers.

    registers.py  the register description (one list) -> RegisterBlock gateware and the host's RegisterMap
    axis.py       H2CAdapter / C2HAdapter: XDMA 512-bit AXI4-Stream <-> pipeline beats of `lanes` words
    monitor.py    StreamMonitor: counters and flags from the pipeline's streams
    xdma.py       the XDMA IP: port list, Instance, lint stub, configuration Tcl
    top.py        Shell (all of the above) and Vu9pTop (XDMA + Shell + the pipeline from pipeline.v)
"""
