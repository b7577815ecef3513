"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from .helpers import SAMPLE

# The Triton kernels are tested on CPU tensors through Triton's interpreter where no GPU is
# present (CI); on a CUDA machine they compile and run natively. Triton reads this when a kernel
# is defined, i.e. when mcan_deploy.kernels.rcab is first imported, which no test module does
# at collection time before this file runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # tests compare float32 paths at ~1e-5; TF32 convolutions/matmuls would round to ~1e-3
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert (SAMPLE / "train" / "HR").is_dir(), "the bundled sample is missing from the repo"
    return SAMPLE


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests compare runs bit for bit; keep the thread count fixed across them."""
    n = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _openvino_cache(tmp_path_factory):
    """Converted and compiled OpenVINO models go to a temporary folder, not the user's cache."""
    old = os.environ.get("MCAN_DEPLOY_CACHE")
    os.environ["MCAN_DEPLOY_CACHE"] = str(tmp_path_factory.mktemp("mcan-cache"))
    yield
    if old is None:
        os.environ.pop("MCAN_DEPLOY_CACHE", None)
    else:
        os.environ["MCAN_DEPLOY_CACHE"] = old
