"""What ``mcan-bench`` measures: ``BenchConfig``, the back-ends it knows and the training options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..model import ModelConfig

# training step options (issue 18): today's float32 eager step first, the ratios are against it
TRAIN_OPTIONS: dict[str, dict[str, Any]] = {
    "fp32": dict(precision="fp32", channels_last=False, optimizer_impl="for_loop"),
    "fp32 channels_last": dict(precision="fp32", channels_last=True, optimizer_impl="for_loop"),
    "fp32 fused optimiser": dict(precision="fp32", channels_last=False, optimizer_impl="auto", cuda_graphs=False),
    "bf16": dict(precision="bf16", channels_last=False, optimizer_impl="for_loop"),
    "bf16 channels_last": dict(precision="bf16", channels_last=True, optimizer_impl="for_loop"),
    "default": {},  # TrainConfig()'s defaults, resolved on the device (CUDA graphs where a step qualifies)
    "bf16 CUDA graphs": dict(precision="bf16", channels_last=True, optimizer_impl="auto", cuda_graphs=True),
}
CUDA_ONLY_OPTIONS = ("bf16 CUDA graphs",)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``quick`` is the demo-size model at two small sizes."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(n_resblocks=4, n_feats=32))
    sizes: tuple[int, ...] = (256, 512)  # square image sides
    repeat: int = 3
    tile: int = 128  # tile core side for the tiled runs
    backends: tuple[str, ...] = ("eager", "channels_last", "compile", "onnxruntime")
    compile_sizes: tuple[int, ...] = (256,)  # torch.compile compiles per shape: keep this short
    train_steps: int = 5
    train_batch: int = 16  # the report's batch and LR patch side (sec. 4)
    train_patch: int = 48
    train_options: tuple[str, ...] = tuple(TRAIN_OPTIONS)  # keys of TRAIN_OPTIONS (CUDA-only ones skipped elsewhere)
    train_models: tuple[tuple[str, ModelConfig], ...] = (
        ("demo", ModelConfig(n_resblocks=4, n_feats=32)),
        ("paper", ModelConfig()),
    )
    device: str = "cpu"
    quality_model: str | None = None  # a trained model: quality table of every back-end and precision
    quality_data: str | None = None  # its pairs (train/ calibrates int8, test/ is measured)


TRITON_BACKENDS = {"triton": torch.float32, "triton_float16": torch.float16, "triton_bfloat16": torch.bfloat16}
OPENVINO_BACKENDS = {"openvino": "fp32", "openvino_bf16": "bf16", "openvino_int8": "int8"}
BACKENDS = (
    "eager",
    "channels_last",
    "compile",
    "onnxruntime",
    *OPENVINO_BACKENDS,
    "float16",
    "bfloat16",
    *TRITON_BACKENDS,
)
