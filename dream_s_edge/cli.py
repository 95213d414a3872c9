"""The `dream-s-edge` command line. Thin: parse flags into config dataclasses, call one library
function, print. Every user error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dream_s_edge.commands import deploy, model, training, tuning
from runtime.errors import DreamSEdgeError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render the README's CLI reference)."""
    parser = argparse.ArgumentParser(
        prog="dream-s-edge", description="Speculative decoding for vision-language models on edge devices."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (model, training, deploy, tuning):
        group.register(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dream-s-edge` console script."""
    args = build_parser().parse_args(argv)
    try:
        _configure_logging(args.verbose)
        return args.func(args)
    except DreamSEdgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
