"""The training section of ``mcan-bench``: the trainer's own step of one block and of N under each
training option, against float32 eager in the same run, with the data-wait share."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..model import build_model
from .config import CUDA_ONLY_OPTIONS, TRAIN_OPTIONS, TRITON_BACKENDS, BenchConfig
from .inference import _triton_usable
from .measure import _sync

if TYPE_CHECKING:
    from ..config import RcabImpl

log = logging.getLogger("mcan_deploy.bench")


def bench_training(cfg: BenchConfig, device: torch.device, sample_dir: Path | None) -> list[dict[str, Any]]:
    """Step time of one block and of N (batch 16 at 48x48 unless configured, L1, Adam) under each training option
    (``TRAIN_OPTIONS``: precision, memory format, optimiser form, CUDA graphs), with the ratio to
    today's float32 eager step in the same run, and the data-wait share. The step is the
    trainer's own (``TrainStep``); the fused Triton RCAB tail is timed in float32 eager only."""
    from ..config import StageConfig, TrainConfig
    from ..data import PairedImages, PatchSampler, load_images
    from ..train.loop import loss_function
    from ..train.step import StepOptions, TrainStep, make_optimizer

    if sample_dir is not None and (sample_dir / "train").is_dir():
        data = load_images(sample_dir / "train", progress=False).to(device)
    else:
        g = torch.Generator().manual_seed(0)
        xs = [torch.rand(3, 96, 96, generator=g) for _ in range(4)]
        data = PairedImages([str(i) for i in range(4)], xs, xs).to(device)
    options = [o for o in cfg.train_options if device.type == "cuda" or o not in CUDA_ONLY_OPTIONS]
    runs: list[tuple[RcabImpl, str]] = [("torch", o) for o in options]
    if any(b in TRITON_BACKENDS for b in cfg.backends) and _triton_usable(device) is None:
        runs.append(("triton", "fp32"))
    stage = StageConfig(name="bench", optimizer="adam", iters=[cfg.train_steps + 1], lr=[1e-4])
    rows: list[dict[str, Any]] = []
    for name, base_cfg in cfg.train_models:
        for impl, option in runs:
            torch.manual_seed(0)
            model = build_model(dataclasses.replace(base_cfg, rcab_impl=impl)).to(device)
            opts, _ = StepOptions.for_run(TrainConfig(**TRAIN_OPTIONS[option]), device)
            if opts.channels_last:
                model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            for what, module, fwd in (
                ("block", model.blocks[0], lambda x, m=model: m.blocks[0](x)),
                ("N", model, lambda x, m=model: m(x)),
            ):
                sampler = PatchSampler(data, cfg.train_patch, cfg.train_batch, seed=0)
                opt = make_optimizer(module.parameters(), stage, opts.optimizer_impl, capturable=opts.cuda_graphs)
                step = TrainStep(fwd, opt, loss_function("l1"), opts)
                data_t, step_t = [], []
                for i in range(cfg.train_steps + 1):
                    t0 = time.perf_counter()
                    x, y = sampler.sample()
                    _sync(device)
                    t1 = time.perf_counter()
                    step(x, y)
                    _sync(device)
                    t2 = time.perf_counter()
                    if i:  # the first step warms up (and captures the CUDA graph)
                        data_t.append(t1 - t0)
                        step_t.append(t2 - t0)
                rows.append(
                    {
                        "model": name,
                        "what": what,
                        "rcab": impl,
                        "options": option,
                        "precision": opts.precision,
                        "describe": opts.describe(),
                        "step_s": statistics.median(step_t),
                        "min_s": min(step_t),
                        "max_s": max(step_t),
                        "data_share": sum(data_t) / sum(step_t),
                    }
                )
                log.info("train %s %s %s (%s): %.3f s/step", name, what, impl, option, rows[-1]["step_s"])
    for r in rows:  # speed-up over today's float32 eager step of the same model, same run
        base = next(
            (
                b
                for b in rows
                if (b["model"], b["what"], b["rcab"], b["options"]) == (r["model"], r["what"], "torch", "fp32")
            ),
            None,
        )
        r["speedup_vs_fp32"] = base["step_s"] / r["step_s"] if base else None
    return rows
