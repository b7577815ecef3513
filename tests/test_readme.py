"""The README's Python example, run as written against a model and a photo in a fresh folder."""

from __future__ import annotations

import re

import cv2
import numpy as np
import torch

from mcan_deploy.checkpoint import save_model
from mcan_deploy.model import ModelConfig, build_model

from .helpers import REPO


def test_readme_python_example_runs(tmp_path, monkeypatch):
    (block,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)[:1]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    save_model("runs/demo/model.safetensors", build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8)))
    photo = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    cv2.imwrite("photo.png", photo)
    exec(compile(block, "README.md", "exec"), {})
    out = cv2.imread("restored.png")
    assert out.shape == photo.shape and not np.array_equal(out, photo)
