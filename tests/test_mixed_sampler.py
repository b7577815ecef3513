"""Batches mixed from several data folders (cameras) in set proportions."""

from __future__ import annotations

import pytest
import torch

from mcan_deploy.data import PairedImages, PatchSampler
from mcan_deploy.errors import DataError


def folder(n: int, value: float) -> PairedImages:
    """n pairs whose pixels all equal ``value``: a patch tells which folder it came from."""
    imgs = [torch.full((3, 20, 20), value) for _ in range(n)]
    return PairedImages([f"{value}-{i}" for i in range(n)], imgs, imgs)


@pytest.mark.parametrize("mix, want", [(None, [0.5, 0.5]), ([3.0, 1.0], [0.75, 0.25]), ([0.0, 1.0], [0.0, 1.0])])
def test_folders_take_their_share_of_patches_whatever_their_size(mix, want):
    data = PairedImages.join([folder(10, 0.0), folder(2, 1.0)])  # 10 pairs against 2
    sampler = PatchSampler(data, 8, 16, seed=3, mix=mix)
    counts = torch.zeros(2)
    for _ in range(1500):  # 24,000 patches
        x, _ = sampler.sample()
        ones = int((x[:, 0, 0, 0] == 1.0).sum())
        counts += torch.tensor([16 - ones, ones])
    share = counts / counts.sum()
    assert torch.allclose(share, torch.tensor(want), atol=0.01), share


def test_within_a_folder_every_pair_is_drawn_evenly():
    data = PairedImages.join([folder(4, 0.0), folder(1, 1.0)])
    for k in range(4):
        data.inputs[k] = torch.full((3, 20, 20), 0.1 * (k + 2))
    sampler = PatchSampler(data, 8, 16, augment=False, seed=0)
    seen = torch.zeros(4)
    for _ in range(1000):
        x, _ = sampler.sample()
        for v in x[:, 0, 0, 0].tolist():
            if v != 1.0:
                seen[round(v / 0.1) - 2] += 1
    assert torch.allclose(seen / seen.sum(), torch.full((4,), 0.25), atol=0.02), seen


def test_one_folder_draws_exactly_as_before():
    """Runs on one folder (all existing ones) keep their batches bitwise: the old draw order."""
    data = folder(5, 0.5)
    for k in range(5):
        data.inputs[k] = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(k))
    sampler = PatchSampler(data, 8, 4, seed=11)
    g = torch.Generator().manual_seed(11)
    idx = torch.randint(5, (4,), generator=g).tolist()
    u = torch.rand(4, 2, generator=g).tolist()
    tf = torch.randint(8, (4,), generator=g).tolist()
    x, _ = sampler.sample()
    from mcan_deploy.data import augment

    for b, (i, (fy, fx), t) in enumerate(zip(idx, u, tf)):
        top, left = int(fy * 13), int(fx * 13)
        want = augment(data.inputs[i][:, top : top + 8, left : left + 8], t % 4, t >= 4)
        assert torch.equal(x[b], want)


def test_bad_mixes_are_one_line_errors():
    data = PairedImages.join([folder(2, 0.0), folder(2, 1.0)])
    for mix in ([1.0], [1.0, -1.0], [0.0, 0.0]):
        with pytest.raises(DataError, match="one weight >= 0 per data folder"):
            PatchSampler(data, 8, 4, mix=mix)


def test_two_folders_train_together_and_validate_apart(sample_dir, tmp_path, capsys):
    """A second "camera": the sample's pairs with darkened LR images, fewer of them."""
    import json
    import shutil

    import cv2
    import tomli_w

    from mcan_deploy.cli.train import main as train_main
    from mcan_deploy.data import load_images
    from mcan_deploy.metrics import psnr

    from .helpers import tiny_plan_dict

    other = tmp_path / "camera2"
    for split, keep in (("train", 3), ("test", 2)):
        for side in ("HR", "LR"):
            (other / split / side).mkdir(parents=True)
            for f in sorted((sample_dir / split / side).iterdir())[:keep]:
                if side == "LR":
                    cv2.imwrite(str(other / split / side / f.name), (cv2.imread(str(f)) * 0.8).astype("uint8"))
                else:
                    shutil.copy(f, other / split / side / f.name)
    data = tiny_plan_dict()
    data["data"]["mix"] = [1.0, 3.0]
    data["phases"] = data["phases"][:1]
    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(data))
    run = tmp_path / "run"
    args = ["--config", str(plan), "--data", str(sample_dir), str(other), "--out", str(run), "--device", "cpu"]
    assert train_main([*args, "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["data"] == [str(sample_dir.resolve()), str(other.resolve())]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    identity = next(r for r in records if r["kind"] == "identity")
    for k, root in enumerate((sample_dir, other)):  # each folder's baseline, computed here independently
        val = load_images(root / "test", progress=False)
        want = sum(psnr(x[None], y[None]) for x, y in zip(val.inputs, val.targets)) / len(val)
        assert abs(identity[f"psnr_data{k + 1}"] - want) < 1e-9
    assert identity["psnr_data2"] < identity["psnr_data1"], "darkened LR is further from its HR"
    phase = next(r for r in records if r["kind"] == "phase")
    assert {"psnr_data1", "psnr_data2"} <= set(phase)
    assert abs(phase["psnr"] - (3 * phase["psnr_data1"] + 2 * phase["psnr_data2"]) / 5) < 1e-9
    assert "| identity (LR) |" in (run / "report.md").read_text()


def test_validation_only_folders_get_their_own_line_and_stay_out_of_the_scores(sample_dir, tmp_path):
    """How a model does on another camera it never trains on: data.val_dirs / --val-data."""
    import json

    import tomli_w

    from mcan_deploy.cli.train import main as train_main
    from mcan_deploy.data import load_images
    from mcan_deploy.metrics import psnr

    from .helpers import tiny_plan_dict

    other = tmp_path / "camera2"
    for split in ("train", "test"):
        for side in ("HR", "LR"):
            (other / split / side).mkdir(parents=True)
    import shutil

    for f in sorted((sample_dir / "test" / "HR").iterdir())[:2]:  # two of the sample's test pairs
        shutil.copy(f, other / "test" / "HR" / f.name)
        shutil.copy(sample_dir / "test" / "LR" / f.name, other / "test" / "LR" / f.name)
    data = tiny_plan_dict()
    data["phases"] = data["phases"][:1]
    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(data))
    run = tmp_path / "run"
    args = ["--config", str(plan), "--data", str(sample_dir), "--val-data", str(other), "--out", str(run)]
    assert train_main([*args, "--device", "cpu", "--no-progress"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["data"] == str(sample_dir.resolve()) and info["val_data"] == [str(other.resolve())]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    identity = next(r for r in records if r["kind"] == "identity")
    own = load_images(sample_dir / "test", progress=False)
    want = sum(psnr(x[None], y[None]) for x, y in zip(own.inputs, own.targets)) / len(own)
    assert abs(identity["psnr"] - want) < 1e-9, "the overall score is the training folder's alone"
    assert abs(identity["psnr_data1"] - want) < 1e-9
    two = load_images(other / "test", progress=False)
    assert abs(identity["psnr_data2"] - sum(psnr(x[None], y[None]) for x, y in zip(two.inputs, two.targets)) / 2) < 1e-9
    assert "camera2" in (run / "report.md").read_text()
