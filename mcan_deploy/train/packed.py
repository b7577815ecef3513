"""Several runs trained together on one device: ``train_packed``.

One run of the paper's plan keeps an H200 about 5% busy: its steps are many small kernels. The
runs of an experiment (seeds, the single back-propagation baseline, patch sizes) therefore share
the device. Each run is a whole ``PhaseRunner`` in its own thread, with its own run directory,
seeds, data order, learning-rate schedule, checkpoints and resume, and the threads take turns:
a run holds the turn from the end of one training iteration to the end of its next one, then
hands it on, round robin (``Turns``). Only one run's Python executes at a time, in a fixed order,
so a packed run computes what it computes alone (bitwise on a CPU; on CUDA up to the
convolution algorithms cuDNN picks), and no two runs touch torch's global state at once (seeded
initialisation, CUDA-graph capture). On CUDA each run queues its work on its own stream: while
one run's host code prepares its next step, the device runs the steps the others have queued.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Plan
from ..errors import MCANError, TrainingInterrupted
from ..runners.base import resolve_device
from .phases import PhaseRunner
from .rundir import RunResult

log = logging.getLogger(__name__)

__all__ = ["CUDA_PACK", "THREAD_PREFIX", "PackedRun", "Turns", "resolve_pack", "train_packed"]

THREAD_PREFIX = "mcan-run:"  # a packed run's thread is named THREAD_PREFIX + its name (log lines say which run)
CUDA_PACK = 3  # runs trained at once on a CUDA device unless told otherwise


def resolve_pack(pack: int | None, device: str | torch.device) -> int:
    """How many runs train at once: ``pack`` as given, else ``CUDA_PACK`` on CUDA and 1 on a CPU,
    where runs taking turns would only finish later each, not sooner together."""
    if pack is not None:
        if pack < 1:
            raise MCANError(f"--pack {pack}: must be >= 1 (runs trained at once)")
        return pack
    return CUDA_PACK if resolve_device(str(device)).type == "cuda" else 1


@dataclass(frozen=True)
class PackedRun:
    """One run of a pack: what ``train`` takes, and a short name for logs and progress bars."""

    plan: Plan
    data_root: str | Path | Sequence[str | Path]
    out_dir: Path
    name: str


class Turns:
    """Round-robin turns among the threads of runs ``0..n-1``; a run that ends leaves the round."""

    def __init__(self, n: int) -> None:
        self._cond = threading.Condition()
        self._order = list(range(n))
        self._turn: int | None = 0 if n else None

    def take(self, k: int) -> None:
        """Wait until it is run ``k``'s turn."""
        with self._cond:
            self._cond.wait_for(lambda: self._turn == k)

    def pass_on(self, k: int) -> None:
        """Run ``k`` hands the turn to the next run and waits for it to come back."""
        with self._cond:
            i = self._order.index(k)
            self._turn = self._order[(i + 1) % len(self._order)]
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._turn == k)

    def leave(self, k: int) -> None:
        """Run ``k`` has ended (finished, interrupted or failed): the next run takes the turn."""
        with self._cond:
            i = self._order.index(k)
            self._order.remove(k)
            if self._turn == k:
                self._turn = self._order[i % len(self._order)] if self._order else None
            self._cond.notify_all()


def _stream(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """A run's own CUDA stream (the current stream is per thread), or nothing off CUDA."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device))


def _run(run: PackedRun, dev: torch.device, progress: bool, stop: Callable[[], bool], packed: int) -> RunResult:
    """One run of the pack; its model, data and optimisers are freed before it leaves the round."""
    runner = PhaseRunner(run.plan, run.data_root, run.out_dir, str(dev), progress, stop, label=run.name, packed=packed)
    if dev.type == "cuda" and not runner.step_options.cuda_graphs:
        log.warning(
            "packed run %s: no CUDA graphs (%s): each step reads its loss back before the next run's "
            "turn, so the runs take turns on the GPU without overlapping",
            run.name,
            runner.step_options.graphs_why,
        )
    return runner.run()


def _join(threads: list[threading.Thread]) -> None:
    """Wait for every run, with a timeout so that the main thread still takes signals: the first
    Ctrl-C asks each run to stop at a checkpoint; a second raises KeyboardInterrupt here, and the
    runs' threads (daemons) end with the process, as one run does."""
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.5)


def train_packed(
    runs: Sequence[PackedRun],
    device: str = "auto",
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[RunResult]:
    """Train ``runs`` together on one device (see the module docstring); returns their results in
    order. A run that fails does not stop the others: once all have ended, the first failure is
    raised (``TrainingInterrupted`` when every run that ended early was stopped by
    ``should_stop``; running the same call again resumes each one)."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names) or len({r.out_dir.resolve() for r in runs}) != len(runs):
        raise MCANError(f"packed runs need distinct names and run directories (given: {', '.join(names)})")
    dev = resolve_device(device)
    turns = Turns(len(runs))
    results: list[RunResult | None] = [None] * len(runs)
    errors: list[BaseException | None] = [None] * len(runs)
    threads_per_op = torch.get_num_threads()  # set again in each run's thread, whatever the backend gives it

    def body(k: int) -> None:
        run = runs[k]
        turns.take(k)
        try:
            torch.set_num_threads(threads_per_op)  # the caller's, as a solo run would compute with
            if should_stop():  # asked to stop while the runs before it started: do not start
                raise TrainingInterrupted(f"run {run.name} not started")

            def stop() -> bool:
                turns.pass_on(k)
                return should_stop()

            with _stream(dev):
                results[k] = _run(run, dev, progress, stop, len(runs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller once every run has ended
            errors[k] = exc
            if not isinstance(exc, TrainingInterrupted):
                log.error("packed run %s failed: %s", run.name, exc)
        finally:
            turns.leave(k)

    threads = [
        threading.Thread(target=body, args=(k,), name=THREAD_PREFIX + r.name, daemon=True) for k, r in enumerate(runs)
    ]
    log.info("training %d runs together on %s: %s", len(runs), dev, ", ".join(names))
    for t in threads:
        t.start()
    _join(threads)
    failed = [e for e in errors if e is not None and not isinstance(e, TrainingInterrupted)]
    if failed:
        raise failed[0]
    stopped = [runs[k].name for k, e in enumerate(errors) if e is not None]
    if stopped:
        raise TrainingInterrupted(f"runs {', '.join(stopped)} stopped at a checkpoint; run the same command to resume")
    return [r for r in results if r is not None]
