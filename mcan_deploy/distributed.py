"""Running under torchrun: which process this is, and the few collective steps the trainer and
the upscaler need, on PyTorch's own engine (torch.distributed: NCCL on GPUs, gloo on CPUs).

``Dist()`` is the single-process case: every helper is then a no-op, so code paths do not fork
on whether torchrun started the process.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from .errors import MCANError

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Dist", "from_env", "init", "shutdown"]


@dataclass(frozen=True)
class Dist:
    """This process's place among ``world`` processes (``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs metrics and prints summaries."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world``-th, starting at ``rank``."""
        return list(items[self.rank :: self.world])

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all ranks (a loss, for logging and the NaN check)."""
        if not self.enabled:
            return float(value)
        t = value.detach().float().reshape(1).clone()
        torch.distributed.all_reduce(t)
        return float(t) / self.world

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on one (a stop request must stop all of them)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def sum_ints(self, values: Sequence[int]) -> list[int]:
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def check_same(self, what: str, value: object) -> None:
        """Raise on every rank unless ``value`` is equal on all of them: ranks that see different
        files (no shared filesystem, a node-local copy) would otherwise split work wrongly or
        call collectives out of step."""
        if not self.enabled:
            return
        import hashlib

        digest = hashlib.sha256(repr(value).encode()).hexdigest()
        seen: list[object] = [None] * self.world
        torch.distributed.all_gather_object(seen, digest)
        odd = [r for r, d in enumerate(seen) if d != seen[0]]
        if odd:
            raise MCANError(
                f"{what} differs between rank 0 and rank(s) {odd}: every process must see the "
                "same files (put --data, --out and the inputs on a filesystem all machines share)"
            )

    def broadcast_(self, t: torch.Tensor, src: int) -> torch.Tensor:
        """``t`` (same shape on every rank) takes rank ``src``'s values, in place."""
        if self.enabled:
            torch.distributed.broadcast(t, src)
        return t

    def _device(self) -> torch.device:
        backend = str(torch.distributed.get_backend())
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def from_env() -> Dist:
    """The torchrun environment of this process (single-process when it has none)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise MCANError("RANK / WORLD_SIZE / LOCAL_RANK are not integers; start with torchrun") from None
    if world < 1 or not 0 <= rank < world:
        raise MCANError(f"RANK={rank} WORLD_SIZE={world}: not a valid torchrun environment")
    return Dist(rank, world, local)


def init(device: str = "auto", timeout_min: float = 120.0, backend: str | None = None) -> tuple[Dist, str]:
    """Join the process group torchrun set up (NCCL where each process has a GPU, else gloo,
    unless ``backend`` says) and pick this process's device: ``auto``/``cuda`` become
    ``cuda:LOCAL_RANK`` under torchrun. ``timeout_min`` bounds how long a rank waits for the
    others at a collective (rank 0 validating and writing the report, while the others wait).
    Returns the ``Dist`` and the device string to use."""
    d = from_env()
    if not d.enabled:
        return d, device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if torch.cuda.device_count() <= d.local_rank:
            raise MCANError(
                f"LOCAL_RANK={d.local_rank} but this machine has {torch.cuda.device_count()} "
                "CUDA devices; start at most that many processes per node"
            )
        torch.cuda.set_device(d.local_rank)
        device = f"cuda:{d.local_rank}"
    elif device == "auto":
        device = "cpu"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend or ("nccl" if cuda else "gloo"), timeout=datetime.timedelta(minutes=timeout_min)
        )
    log.debug("rank %d of %d (local %d) on %s", d.rank, d.world, d.local_rank, device)
    return d, device


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
