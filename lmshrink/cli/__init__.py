"""``lmshrink COMMAND``: each command is one module here with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Commands parse, call the library and print; they hold no logic of their own.

User errors (:class:`~lmshrink.errors.LmshrinkError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# One line per command module (lmshrink/cli/<name>.py); order is the order of `lmshrink --help`.
COMMANDS = [
    "demo",
    "train",
    "eval",
    "info",
    "compress",
    "download",
    "binarize",
    "wordsim",
    "classify",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="lmshrink", description="Make trained language models really smaller and faster.")
    parser.add_argument("--version", action="version", version=f"lmshrink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f".{name}", __name__)
        p = sub.add_parser(name.replace("_", "-"), help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..errors import LmshrinkError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except LmshrinkError as e:
        print(f"lmshrink {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmshrink {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
