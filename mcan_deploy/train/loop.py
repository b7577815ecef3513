"""One training loop for one stage: sample a batch, step the optimiser, report through callbacks.

Every phase of every plan runs through ``run_stage``; what is trained (a block, or all of N),
how it is clamped and which data it sees is decided by the phase runner.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import LossName, StageConfig
from ..errors import NonFiniteError
from ..metrics import rgb_to_y
from .step import StepOptions, TrainStep, set_lr

Batch = tuple[torch.Tensor, torch.Tensor]


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The report's sec. 6 idea: L1 of the first differences of the luma residual. It is blind
    to a constant offset, so use it after (or beside) an L1 stage."""
    r = rgb_to_y(pred) - rgb_to_y(target)
    return (r[..., :, 1:] - r[..., :, :-1]).abs().mean() + (r[..., 1:, :] - r[..., :-1, :]).abs().mean()


def loss_function(name: LossName) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "l1": F.l1_loss,
        "l2": F.mse_loss,
        "gradient": gradient_loss,
    }
    return losses[name]


class DataTimer:
    """Time spent drawing batches. On a CPU, wall time around ``sample()``; on CUDA the sampler's
    kernels run asynchronously, so the host's time would read about 0: CUDA events around it, read
    (one synchronisation) only at each log line."""

    def __init__(self) -> None:
        self.host = 0.0
        self.events: list[tuple[Any, Any]] = []
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.events.append((ev, None))

    def stop(self, x: torch.Tensor) -> None:
        self.host += time.perf_counter() - self._t0
        if self.events and self.events[-1][1] is None:
            if x.is_cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self.events[-1] = (self.events[-1][0], end)
            else:
                self.events.pop()

    def seconds(self) -> float:
        """Host time on a CPU; with CUDA, the larger of host and device time. Resets."""
        device = 0.0
        if self.events:
            self.events[-1][1].synchronize()
            device = sum(a.elapsed_time(b) for a, b in self.events) / 1000
        out = max(self.host, device)
        self.host, self.events = 0.0, []
        return out


@dataclass
class LoopCallbacks:
    """What the loop reports to, and asks of, the phase runner."""

    on_log: Callable[[int, float, float, float, float], None]  # iter, loss, lr, s/iter, data share
    on_iter_end: Callable[[int], None]  # after each completed iteration (validation, checkpoints)
    should_stop: Callable[[], bool]  # checked after each iteration
    # the loss as logged and checked for NaN: under DDP the mean over all ranks, so that every
    # rank sees the same value (and takes the same path) and it equals the global batch's loss
    loss_value: Callable[[torch.Tensor], float] = lambda loss: loss.item()


def run_stage(
    forward: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    sample: Callable[[], Batch],
    stage: StageConfig,
    start_iter: int,
    log_every: int,
    callbacks: LoopCallbacks,
    progress: str | None = None,
    lr_scale: float = 1.0,
    micro_batches: int = 1,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    options: StepOptions | None = None,
) -> int:
    """Train from ``start_iter`` to the end of ``stage``; returns the iteration reached (less
    than the total only when ``should_stop`` asked to stop). The stage's learning rates are
    multiplied by ``lr_scale``; a NaN or infinite loss raises ``NonFiniteError``.

    ``micro_batches`` splits each batch into that many equal chunks whose gradients add up
    (gradient accumulation; ``no_sync``: DDP's, so ranks exchange gradients once per step).
    Each chunk's loss is scaled by 1/k, a power of two for k = 2, 4, ..., so a 1-process run with
    k chunks computes bitwise what k DDP processes compute on one chunk each.

    ``options`` say how each step is computed (precision, memory format, optimiser form, CUDA
    graphs); under CUDA graphs the loss is read back at each log line, not at every step, so
    the host never waits for the device in between."""
    from tqdm.auto import tqdm

    step = TrainStep(forward, optimizer, loss_function(stage.loss), options, micro_batches, no_sync)
    deferred = step.options.cuda_graphs
    total = stage.total_iters
    bar = tqdm(
        total=total,
        initial=start_iter,
        desc=progress,
        unit="it",
        disable=progress is None,
        dynamic_ncols=True,
        leave=False,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )  # logs stay short off a terminal
    loss_sum, n, t_start = 0.0, 0, time.perf_counter()
    timer = DataTimer()
    pending: torch.Tensor | None = None  # losses not read back yet (CUDA graphs: read at log lines)

    def read(losses: torch.Tensor, where: str) -> float:
        value = callbacks.loss_value(losses)
        if not math.isfinite(value):  # the step above may have spoilt the weights: the caller restores
            raise NonFiniteError(f"stage {stage.name}, {where}: loss is {value} (learning rate {lr:g})")
        return value

    it = start_iter
    try:
        while it < total:
            lr = stage.lr_at(it) * lr_scale
            set_lr(optimizer, lr)
            timer.start()
            x, y = sample()
            timer.stop(x)
            loss = step(x, y)
            it += 1
            n += 1
            pending = loss if pending is None else pending + loss
            if not deferred or it % log_every == 0 or it == total:
                loss_sum += read(pending, f"by iteration {it}" if deferred else f"iteration {it}")
                pending = None
            bar.update(1)
            if it % log_every == 0 or it == total:
                data_time = timer.seconds()
                elapsed = time.perf_counter() - t_start
                bar.set_postfix(loss=f"{loss_sum / n:.4f}", lr=f"{lr:.0e}", refresh=False)
                callbacks.on_log(it, loss_sum / n, lr, elapsed / n, min(1.0, data_time / elapsed))
                loss_sum, n, t_start = 0.0, 0, time.perf_counter()
            callbacks.on_iter_end(it)
            if callbacks.should_stop():
                if pending is not None:  # deferred reads: the steps since the last log line, checked too
                    read(pending, f"by iteration {it}")
                break
    finally:
        bar.close()
    return it
