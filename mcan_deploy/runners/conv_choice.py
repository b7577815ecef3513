"""The fused path's convolution choice: how candidates are named, timed and compared, and the
choice kept on disk between processes.

Timing every candidate at a 12 MP photo's own size takes about 0.8 s on an H200 (seven
candidates, each warmed up and timed five times), paid by every new process: one photo through
``mcan-upscale``, the first image of a folder. The choice depends only on the device, the
software that runs the candidates, the dtype, the channels and the map's size, so it is kept in
``conv-choice.json`` in the cache directory under a key of exactly those, like Triton's own
autotuning cache. A file that cannot be read or written costs a timing, never a run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..kernels.conv3x3 import Config

log = logging.getLogger(__name__)

FILE = "conv-choice.json"


def candidate_name(impl: str, cfg: Config | None) -> str:
    """A candidate as the log, ``FusedBlocks.timings`` and the kept choices name it."""
    return impl if cfg is None else f"{impl} {cfg.describe()}"


def agree(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether two implementations' RCAB outputs agree to the dtype's rounding."""
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1}.get(dtype, 1e-2)  # float32 may run as TF32
    err = (a.float() - b.float()).abs().max().item()
    return bool(err <= tol * max(b.float().abs().max().item(), 1.0))


def time_ms(fn: Callable[[], object], device: torch.device, reps: int = 5) -> float:
    """Milliseconds per call: the fastest of ``reps`` calls each timed on its own, so that one
    call slowed by a clock change or a plan search does not decide. Off CUDA once: there Triton
    runs in its interpreter, which is only a stand-in for tests and never the faster candidate."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t0)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    events[-1][1].synchronize()
    return min(start.elapsed_time(end) for start, end in events)


def choice_key(device: torch.device, dtype: torch.dtype, channels: int, h: int, w: int) -> str:
    """What a choice depends on: the device and its software, dtype, channels and size."""
    import triton

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        cap = f"sm{major}{minor}"
        soft = f"cuda{torch.version.cuda} cudnn{torch.backends.cudnn.version()}"
    else:
        name, cap, soft = device.type, "-", "-"
    dt = str(dtype).replace("torch.", "")
    return f"{name} {cap} | torch{torch.__version__} {soft} triton{triton.__version__} | {dt} c{channels} {h}x{w}"


@dataclass(frozen=True)
class ChoiceCache:
    """Chosen convolutions by ``choice_key``, in ``directory / FILE``."""

    directory: Path

    @property
    def path(self) -> Path:
        return self.directory / FILE

    def _read(self) -> dict[str, dict[str, str | None]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("convolution choices in %s unreadable (%s); timing again", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict[str, str | None] | None:
        """What was chosen for ``key``: candidate names (as ``FusedBlocks.timings`` names them)
        under "choice" (whole maps) and "maps" (the fastest Triton launch), if any, "head", and
        "candidates": every name that was timed, comma-separated."""
        entry = self._read().get(key)
        return entry if isinstance(entry, dict) and isinstance(entry.get("choice"), str) else None

    def put(self, key: str, choice: str, maps: str | None, head: str = "cudnn", candidates: str = "") -> None:
        """Record a choice (``head``: the head's implementation) among ``candidates``; written
        whole to a temporary file and moved into place, so that two processes never leave half
        a file (the last writer's entries win)."""
        data = self._read()
        data[key] = {"choice": choice, "maps": maps, "head": head, "candidates": candidates}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".conv-choice-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot keep the convolution choice in %s (%s); the next process times again", self.path, exc)
