"""Seeds of a run: initialisation that is the same on a fresh run and on a resumed one, and each
process's own seed under torchrun."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["rank_seed", "seeded"]


def rank_seed(seed: int, rank: int) -> int:
    """The global torch seed of one process under torchrun (recorded in run.json)."""
    return seed + 1_000_003 * rank


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """A generator seeded with ``seed``, with the global RNG forked and seeded too, so that
    initialisation is the same on a fresh run and on a resumed one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)
