"""Devices: one small interface, several implementations of the pipeline behind the wire format.

    reference   the NumPy fixed-point reference (model.reference), in a worker thread
    cpu         the same pipeline in C++ (host/native/cpu.cpp), bit-exact, threaded (needs the native core)
    rtl         the generated Verilog in the standalone Verilator harness (sim/standalone.py)
    xdma:DIR    a PCIe card through the Linux XDMA driver's character devices under DIR (see xdma.py)
    zero        answers zeros: measures everything but the pipeline (transport, encoding, assembly)

`open_device(spec, qm, lanes=...)` turns a device string into an opened Device.
"""

from __future__ import annotations

from .base import Device, DeviceError, DeviceTimeout

DEVICE_HELP = {
    "reference": "bit-exact NumPy reference (no hardware); the default",
    "cpu": "the same bit-exact pipeline in C++ on this machine's cores (native core; threads=N)",
    "rtl": "generated RTL compiled by Verilator into a standalone simulator (first use compiles: minutes)",
    "xdma:PATH": "PCIe card via the XDMA driver; PATH is the device prefix, e.g. /dev/xdma0",
    "zero": "answers zero energy and forces: measures transport and host cost only (benchmarks)",
}


def open_device(spec: str, qm, lanes: int = 1, **options) -> Device:
    """'reference' | 'rtl' | 'xdma:/dev/xdma0' -> an opened device for model `qm`."""
    name, _, arg = spec.partition(":")
    if name == "reference":
        from .reference import ReferenceDevice
        dev = ReferenceDevice(qm, lanes=lanes, **options)
    elif name == "rtl":
        from .rtl import RtlDevice
        dev = RtlDevice(qm, lanes=lanes, **options)
    elif name == "xdma":
        from .xdma import XdmaDevice
        # The card reports its own lane count (LANES register); `lanes` is not a choice there.
        dev = XdmaDevice(qm, prefix=arg or "/dev/xdma0", **options)
    elif name == "zero":
        from .zero import ZeroDevice
        dev = ZeroDevice(qm, lanes=lanes, **options)
    elif name == "cpu":
        # No Python version: the cpu device is the native core's (host/native/cpu.cpp).
        from .. import native
        if not native.available():
            raise DeviceError(f"device cpu needs the native host core, which is not available here: "
                              f"{native.why_not() or 'switched off (DPFPGA_NATIVE=0)'}")
        return native.open_device(spec, qm, lanes=lanes, **options)
    else:
        raise DeviceError(f"unknown device {spec!r}; choose from {', '.join(DEVICE_HELP)}")
    dev.open()
    return dev


__all__ = ["Device", "DeviceError", "DeviceTimeout", "open_device", "DEVICE_HELP"]
