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
# Under pytest-xdist (make test) the cores are shared out among the workers, and the processes
# the tests start get the same share as the test itself (a resumed run is compared bitwise with
# a killed subprocess's checkpoints: both must compute with the same number of threads).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests (``@pytest.mark.long``) first: under pytest-xdist a long test that
    starts last runs alone on one core while the others wait (make test)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: the order otherwise


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert (SAMPLE / "train" / "HR").is_dir(), "the bundled sample is missing from the repo"
    return SAMPLE


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests compare runs bit for bit; keep the thread count fixed across them. Under
    pytest-xdist the cores are shared out among the workers (2 workers on 2 cores: 1 each)."""
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
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
