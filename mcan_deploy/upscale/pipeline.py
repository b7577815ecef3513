"""An ordered, bounded pipeline in the standard library only: jobs are read ahead on one small
pool, stepped on the calling thread, and written behind on another, and every job's outcome is
reported in job order, whichever write finishes first.

Bounded: at most ``prefetch + 1`` reads are on their way (the next job and ``prefetch`` after
it), and at most ``prefetch`` writes wait (the caller waits for the oldest before handing on one
more), so at most ``2 * prefetch + 1`` jobs are held at once, whatever their number.
``prefetch = 0`` runs everything on the calling thread, no threads at all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

J = TypeVar("J")
P = TypeVar("P")

__all__ = ["Inline", "OrderedPipeline", "Outcome"]


class Inline:
    """Stands in for a thread pool when ``prefetch`` is 0: runs each call at once, here."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed on through the future, as a pool does
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


@dataclass
class Outcome(Generic[J]):
    """What became of one job, reported in job order: a write handed on (``future``, with the
    step's ``info``), a ``skip`` decided before any read, or a failure before the write."""

    job: J
    future: Future | None = None
    skip: bool = False
    error: Exception | None = None
    info: Any = None


class OrderedPipeline(Generic[J, P]):
    """``for job, read in pipe:`` yields each job's read (a future) in order, after reporting
    the skips before it; ``pipe.write(...)`` hands a result on, ``pipe.failed(...)`` records a
    failure; ``report(outcome)`` sees every outcome in job order. Use as a context manager: the
    pools are shut down on leaving, queued work cancelled when an interrupt leaves it."""

    def __init__(
        self,
        jobs: Sequence[J],
        read: Callable[[J], P],
        skip: Callable[[J], bool],
        report: Callable[[Outcome[J]], None],
        prefetch: int,
        workers: int,
    ) -> None:
        self.jobs, self.read, self.skip, self.report, self.prefetch = jobs, read, skip, report, prefetch
        pools: tuple[Any, Any] = (Inline(), Inline())
        if prefetch:
            pools = (
                ThreadPoolExecutor(workers, thread_name_prefix="mcan-decode"),
                ThreadPoolExecutor(workers, thread_name_prefix="mcan-write"),
            )
        self.readers, self.writers = pools
        self.ahead: deque[tuple[J, Future | None]] = deque()  # reads on their way (None: skipped)
        self.outcomes: deque[Outcome[J]] = deque()
        self.cursor = self.n_reading = self.n_writing = 0

    def __enter__(self) -> OrderedPipeline[J, P]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        self.readers.shutdown(wait=True, cancel_futures=True)
        self.writers.shutdown(wait=True, cancel_futures=interrupted)

    def __iter__(self) -> Iterator[tuple[J, Future]]:
        while True:
            self._refill()
            if not self.ahead:
                break
            job, fut = self.ahead.popleft()
            if fut is None:
                self.outcomes.append(Outcome(job, skip=True))
                self.settle(self.n_writing)
                continue
            self.n_reading -= 1
            yield job, fut
        self.settle(0)

    def _refill(self) -> None:
        """Submit reads until ``prefetch + 1`` are on their way; skipped jobs, decided here before
        any reading, take no place."""
        while self.cursor < len(self.jobs) and self.n_reading < self.prefetch + 1:
            job = self.jobs[self.cursor]
            self.cursor += 1
            if self.skip(job):
                self.ahead.append((job, None))
            else:
                self.ahead.append((job, self.readers.submit(self.read, job)))
                self.n_reading += 1

    def write(self, job: J, fn: Callable[..., Any], *args: Any, info: Any = None) -> None:
        """Hand a result on to the writers, after waiting for room (at most ``prefetch`` waiting)."""
        self.settle(max(self.prefetch, 1) - 1)
        self.outcomes.append(Outcome(job, future=self.writers.submit(fn, *args), info=info))
        self.n_writing += 1
        self.settle(self.n_writing)

    def failed(self, job: J, exc: Exception) -> None:
        """A failure before the write, reported in turn (without its traceback, whose frames
        would keep the job's data alive until then)."""
        self.outcomes.append(Outcome(job, error=exc.with_traceback(None)))
        self.settle(self.n_writing)

    def settle(self, keep_writing: int) -> None:
        """Report outcomes from the front: all that are finished, and more (waiting for them)
        until at most ``keep_writing`` writes are still pending."""
        while self.outcomes:
            first = self.outcomes[0]
            if first.future is not None:
                if not first.future.done() and self.n_writing <= keep_writing:
                    return
                self.n_writing -= 1
                first.future.exception()  # waits for it
            self.outcomes.popleft()
            self.report(first)
