"""What every command shares: logging set-up and turning library errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..errors import MCANError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
RUN_THREAD = "mcan-run:"  # train/packed.py names each packed run's thread so (its THREAD_PREFIX)


class _Formatter(logging.Formatter):
    """``%(run)s``: "[name] " on the log lines of a packed run's thread, else nothing (a formatter,
    not a filter: tqdm's logging redirect keeps a handler's formatter but not its filters)."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.threadName or ""
        record.run = f"[{name.removeprefix(RUN_THREAD)}] " if name.startswith(RUN_THREAD) else ""
        return super().format(record)


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct integers >= 0."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give distinct integers >= 0, e.g. 0,1,2")
    return seeds


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 1")
    return value


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with -v) on stderr; under torchrun only rank 0 logs below WARNING, and every
    line names its rank."""
    import os

    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    level = logging.DEBUG if verbose else logging.INFO
    if world != "1" and rank != "0":
        level = max(level, logging.WARNING)
    tag = f"[rank {rank}] " if world != "1" else ""
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(f"%(asctime)s %(levelname)s {tag}%(run)s%(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])
    if not verbose:  # OpenCV's own decoder warnings ("PNG input buffer is incomplete") would add a
        try:  # second line to our one-line error for the same file
            import cv2

            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except (ImportError, AttributeError):
            pass


def run_main(prog: str, body: Callable[[], int], debug: bool = False) -> int:
    """Run ``body``; an ``MCANError`` becomes its message on stderr and exit code 1, any other
    exception one line naming its type (``debug``: the traceback instead)."""
    try:
        return body()
    except MCANError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if debug:
            raise
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(
            f"{prog}: error: unexpected {type(exc).__name__}: {msg} (run again with --debug for "
            "the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def cli_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
    """Parse ``argv``, set up logging (``-v`` for debug) and run, turning errors into exit codes
    (``--debug``: tracebacks instead of one-line errors)."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False) or args.debug)
    return run_main(parser.prog, lambda: run(args), args.debug)
