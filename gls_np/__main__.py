"""``python -m gls_np``: the tool subcommands, thin over the library.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments and
sets ``func``; ``func(args)`` returns the exit status. Library errors (``ValueError``, the
project's error type, ``CheckpointError`` included) print one line to stderr and exit 2, with
no traceback. Subcommands import what they need when run, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


def _inspect(args: argparse.Namespace) -> int:
    from . import checkpoint

    net, meta = checkpoint.load(args.checkpoint)
    print(checkpoint.summary(net, meta))
    return 0


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="summarise a checkpoint: architecture, parameters, config, last metrics, sigma",
        description="Print a readable summary of a gls_np HDF5 checkpoint.",
    )
    p.add_argument("checkpoint", help="path to a checkpoint file (.h5)")
    p.set_defaults(func=_inspect)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``python -m gls_np`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="python -m gls_np",
        description="gls_np tools. Training is `python mpi_run.py`; these work on its outputs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_inspect(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"gls_np {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"gls_np {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
