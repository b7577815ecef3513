"""Training step time of eager PyTorch: one full-size block N_i and the whole N.

Run with ``make bench`` or
``python -m pytest benchmarks/test_train_step.py --benchmark-only --benchmark-json=benchmarks/results/NAME.json``.
The float32 rows are the trainer's step before issue 18 (NCHW, for-loop Adam); the
``default_options`` row is its step now (``TrainStep`` with ``[train]``'s defaults on this
machine: bf16 autocast where the CPU has it, channels_last, fused Adam). ``mcan-bench`` times
every option and its ratio in one run.
"""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from mcan_deploy.model import ModelConfig, build_model, init_block

pytest.importorskip("pytest_benchmark")


def _step_fn(module, forward, batch: int, patch: int):
    torch.manual_seed(0)
    x = torch.rand(batch, 3, patch, patch)
    y = torch.rand(batch, 3, patch, patch)
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)

    def step():
        loss = F.l1_loss(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator and oneDNN primitive caches
    return step


def _info(benchmark, what: str, batch: int, patch: int) -> None:
    benchmark.extra_info.update(
        what=what,
        batch=batch,
        patch=patch,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
    )


@pytest.mark.benchmark(group="train-step")
def test_block_step_full_size(benchmark):
    """One block N_i of the paper (64 features, 16 RCAB), batch 16 at 48x48."""
    model = build_model(ModelConfig(n_blocks=1))
    init_block(model.blocks[0], "orthogonal")
    step = _step_fn(model.blocks[0], lambda x: model.blocks[0](x, clamp=True), 16, 48)
    _info(benchmark, "N_i paper size", 16, 48)
    benchmark.pedantic(step, rounds=5, iterations=1)


@pytest.mark.benchmark(group="train-step")
def test_full_n_step_full_size(benchmark):
    """All of N (3 blocks), phase 4 or the single back-propagation baseline, batch 16 at 48x48."""
    model = build_model(ModelConfig())
    step = _step_fn(model, lambda x: model(x, clamp=True), 16, 48)
    _info(benchmark, "N paper size", 16, 48)
    benchmark.pedantic(step, rounds=3, iterations=1)


@pytest.mark.benchmark(group="train-step")
def test_demo_block_step(benchmark):
    """One block of configs/demo.toml (32 features, 4 RCAB), batch 16 at 48x48."""
    model = build_model(ModelConfig(n_blocks=1, n_resblocks=4, n_feats=32))
    step = _step_fn(model.blocks[0], lambda x: model.blocks[0](x, clamp=True), 16, 48)
    _info(benchmark, "N_i demo size", 16, 48)
    benchmark.pedantic(step, rounds=10, iterations=1)


@pytest.mark.benchmark(group="train-step")
def test_block_step_full_size_default_options(benchmark):
    """The paper-size block's step as the trainer runs it by default."""
    from mcan_deploy.config import StageConfig, TrainConfig
    from mcan_deploy.train.step import StepOptions, TrainStep, make_optimizer

    model = build_model(ModelConfig(n_blocks=1))
    init_block(model.blocks[0], "orthogonal")
    opts, why = StepOptions.for_run(TrainConfig(), torch.device("cpu"))
    block = model.blocks[0].to(memory_format=torch.channels_last) if opts.channels_last else model.blocks[0]
    opt = make_optimizer(block.parameters(), StageConfig(name="s"), opts.optimizer_impl)
    step = TrainStep(lambda x: block(x, clamp=True), opt, F.l1_loss, opts)
    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 48, 48), torch.rand(16, 3, 48, 48)
    step(x, y)  # warm-up
    _info(benchmark, f"N_i paper size, {opts.describe()} ({why})", 16, 48)
    benchmark.pedantic(lambda: step(x, y), rounds=5, iterations=1)
