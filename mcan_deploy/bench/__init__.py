"""Benchmarks of the toolkit against eager PyTorch, measured in one run on one set of weights.

For each back-end (eager NCHW and channels_last, torch.compile, ONNX Runtime, and on CUDA float16
/bfloat16 and the fused inference RCAB in each dtype) and each image size, whole-image and tiled:
megapixels per second (median of several timed runs after a warm-up, with min and max), peak memory (RSS sampled during the run on CPU,
the allocator's peak on CUDA), the ratio to eager float32 NCHW from the same run, and the achieved
convolution FLOP rate as a share of this machine's matrix-multiply peak, also measured in the run.
Training: step time of one block and of all of N under each training option (precision, memory
format, optimiser form, CUDA graphs on CUDA) against today's float32 eager step, and the share of
a step spent sampling data; the fused Triton RCAB tail where a ``triton`` back-end is asked for.

(``config``: what is measured; ``measure``: how; ``inference`` and ``training``: the sections;
``report``: the run, ``results.json``, ``report.md`` and the plots.)
"""

from .config import BACKENDS, CUDA_ONLY_OPTIONS, OPENVINO_BACKENDS, TRAIN_OPTIONS, TRITON_BACKENDS, BenchConfig
from .inference import bench_inference
from .measure import PeakRSS, conv_flops_per_pixel, machine_info, matmul_peak_gflops
from .report import plot, render_report, run_bench
from .training import bench_training

__all__ = [
    "BACKENDS",
    "CUDA_ONLY_OPTIONS",
    "OPENVINO_BACKENDS",
    "TRAIN_OPTIONS",
    "TRITON_BACKENDS",
    "BenchConfig",
    "PeakRSS",
    "bench_inference",
    "bench_training",
    "conv_flops_per_pixel",
    "machine_info",
    "matmul_peak_gflops",
    "plot",
    "render_report",
    "run_bench",
]
