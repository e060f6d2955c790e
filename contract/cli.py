"""The one command-line style of every entry point (`python -m model`, `science`, `gen`, `host`).

A command is a function and its registration:

    cli = CommandLine("python -m model", OVERVIEW, errors=(ModelFileError, ValueError))

    @cli.command("info", "describe a model file", arg("model", help="model file (.npz)"), JSON_FLAG)
    def cmd_info(args) -> int | None: ...

    def main(argv=None) -> int:
        return cli.main(argv)

The same thing has the same flag everywhere: `-o/--out` where a command writes a file or folder
(`out_arg`; the older `--output` still parses, hidden), `--model` where a model file is an option
with the bundled one as default (`model_arg`; a command whose subject *is* a model file takes it as
its first positional argument instead), `--threads` for torch threads (`threads_arg`).  Every
entry point's help lists its commands with their one-line help; `python -m X COMMAND --help` shows a
command's docstring.  The errors a command may raise for bad input (the `errors` given) end with one
`error: ...` line on stderr and exit code 2, never a traceback; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import Callable


def arg(*flags, **options):
    """An argument of a command, as given to ArgumentParser.add_argument."""
    return flags, options


def out_arg(help: str, **options):
    """-o/--out PATH: where a command writes (a file, a folder or a prefix, as `help` says)."""
    return arg("-o", "--out", dest="out", metavar="PATH", help=help, **options)


def model_arg(help: str = "model file (default: the bundled GeTe model, `python -m model example`)", **options):
    """--model M.npz: a model file given as an option (the bundled one when absent)."""
    return arg("--model", metavar="M.npz", help=help, **options)


def default_threads() -> int:
    """Torch threads that fit this machine: 1.  Measured on the 2-core machines this project runs on,
    the small per-frame batches of training and fine-tuning run 5-10x faster on one thread than on
    torch's default (every core, contending with its own inter-op pool); a second process (a teacher,
    a test) then keeps the other core."""
    return 1


def threads_arg(what: str = "torch threads"):
    """--threads N (default: default_threads(); 0: torch's own default, every core)."""
    return arg("--threads", type=int, default=default_threads(), metavar="N",
               help=f"{what} (default {default_threads()}, which fits this machine; 0: torch's default)")


def set_threads(n: int) -> None:
    """Apply --threads before torch does any work (also to BLAS, through OMP_NUM_THREADS, for child
    processes)."""
    if n < 0:
        raise ValueError(f"--threads must be >= 0, got {n}")
    if n:
        os.environ["OMP_NUM_THREADS"] = str(n)
        import torch
        torch.set_num_threads(n)


def torch_threads() -> int:
    """The threads torch runs on now (what --threads set), for a command's report."""
    import torch
    return torch.get_num_threads()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (the message names the value)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class CommandLine:
    """One entry point: its commands, their arguments and the errors it reports as one line."""

    def __init__(self, prog: str, overview: str, *, errors: tuple = (), epilog: str | None = None,
                 groups: dict[str, str] | None = None):
        """`groups`: one-line help of each command group (`data` -> "teacher-labelled data")."""
        self.prog, self.overview, self.epilog, self.groups = prog, overview, epilog, groups or {}
        self.errors = (FileNotFoundError,) + tuple(errors)
        self._commands: list[tuple[str, str, tuple, Callable, str | None]] = []

    def command(self, name: str, help: str, *arguments, group: str | None = None):
        """Register `fn(args) -> exit code (None = 0)` as `name` (inside subcommand `group`, e.g.
        `data melt-quench`); its docstring is its --help text."""
        def register(fn):
            self._commands.append((name, help, arguments, fn, group))
            return fn
        return register

    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog=self.prog, description=self.overview, epilog=self.epilog,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
        groups: dict[str, argparse._SubParsersAction] = {}
        for name, help, arguments, fn, group in self._commands:
            where = sub
            if group is not None:
                if group not in groups:
                    g = sub.add_parser(group, help=f"{self.groups.get(group, group)}: " + ", ".join(
                        c[0] for c in self._commands if c[4] == group))
                    groups[group] = g.add_subparsers(dest=f"{group}_cmd", metavar="COMMAND", required=True)
                where = groups[group]
            c = where.add_parser(name, help=help, description=inspect.cleandoc(fn.__doc__ or help),
                                 epilog=self.epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
            for flags, options in arguments:
                c.add_argument(*flags, **options)
                if "--out" in flags:  # the older spelling still parses
                    c.add_argument("--output", dest="out", help=argparse.SUPPRESS)
            c.set_defaults(fn=fn)
        return p

    def commands(self) -> list[str]:
        """Every command line this entry point knows ('info', 'data melt-quench', ...)."""
        return [name if group is None else f"{group} {name}" for name, _, _, _, group in self._commands]

    def main(self, argv=None) -> int:
        p = self.parser()
        args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
        if not args.cmd:
            p.print_help()
            return 0
        try:
            rc = args.fn(args)
        except KeyboardInterrupt:
            return 130
        except self.errors as err:
            text = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {text}", file=sys.stderr)
            return 2
        return 0 if rc is None else int(rc)
