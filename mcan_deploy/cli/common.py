"""What every command shares: logging set-up and turning library errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..errors import MCANError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; an ``MCANError`` becomes one line on stderr and exit code 1."""
    try:
        return body()
    except MCANError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def cli_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
             argv: list[str] | None) -> int:
    """Parse ``argv``, set up logging (``-v`` for debug) and run, turning errors into exit codes."""
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    return run_main(parser.prog, lambda: run(args))
