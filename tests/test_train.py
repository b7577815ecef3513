"""The phase runner: what each phase trains, where its data comes from, resuming, the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
import tomli_w
import torch

import mcan_deploy.train.kinds.training as training_mod
import mcan_deploy.train.phases as phases_mod
from mcan_deploy.checkpoint import load_model, load_tensors
from mcan_deploy.config import plan_from_dict
from mcan_deploy.data import load_images
from mcan_deploy.errors import CheckpointError
from mcan_deploy.metrics import psnr
from mcan_deploy.train import train

from .conftest import THREADS
from .helpers import REPO, cli_here, once_per_run, tiny_plan, tiny_plan_dict
from .test_model import reference_block


def _block_states(model):
    return [{k: v.clone() for k, v in b.state_dict().items()} for b in model.blocks]


def _same(a, b):
    return all(a[k].equal(b[k]) for k in a)


@pytest.fixture
def spied_run(monkeypatch):
    """Record, around every stage, which blocks changed and whether the forward clamps."""
    calls = []
    real = training_mod.run_stage

    def spy(forward, optimizer, sample, stage, start, log_every, callbacks, progress=None, **kw):
        model = spy.model
        before = _block_states(model)
        with torch.no_grad():
            peak = forward(torch.full((1, 3, 16, 16), 3.0)).max().item()
        out = real(forward, optimizer, sample, stage, start, log_every, callbacks, progress, **kw)
        after = _block_states(model)
        calls.append(
            dict(
                stage=stage.name, clamp=stage.clamp, peak=peak, changed=[not _same(b, a) for b, a in zip(before, after)]
            )
        )
        return out

    real_build = phases_mod.build_model

    def build(cfg):
        spy.model = real_build(cfg)
        return spy.model

    monkeypatch.setattr(training_mod, "run_stage", spy)
    monkeypatch.setattr(phases_mod, "build_model", build)
    return calls


def test_each_phase_trains_only_its_block_and_clamp_stages_clamp(spied_run, sample_dir, tmp_path):
    train(tiny_plan(), sample_dir, tmp_path / "run", device="cpu", progress=False)
    assert [(c["stage"], c["changed"]) for c in spied_run] == [
        ("adadelta", [True, False]),
        ("adam", [True, False]),  # phase 1-1: N1 only
        ("adam", [False, True]),  # phase 2-1: N2 only
        ("adam", [True, True]),  # phase 4: all of N
    ]
    for c in spied_run:
        assert (c["peak"] <= 1.0) == c["clamp"], c


def test_inheritance_generated_data_and_saved_blocks(sample_dir, tmp_path):
    data = tiny_plan_dict()
    data["phases"] = data["phases"][:3]
    data["phases"][2]["stages"][0]["iters"] = [0]  # phase 2-1 does nothing: N2 stays its init
    train(plan_from_dict(data), sample_dir, tmp_path / "inherit", device="cpu", progress=False)
    n1, _ = load_tensors(tmp_path / "inherit" / "blocks" / "N1.safetensors")
    n2, _ = load_tensors(tmp_path / "inherit" / "blocks" / "N2.safetensors")
    assert _same(n1, n2), "N2 starts as a copy of N1's final weights"

    data["phases"][2]["stages"][0]["iters"] = [4]
    run = tmp_path / "run"
    train(plan_from_dict(data), sample_dir, run, device="cpu", progress=False)
    n1, _ = load_tensors(run / "blocks" / "N1.safetensors")
    n2, _ = load_tensors(run / "blocks" / "N2.safetensors")
    assert not _same(n1, n2)
    final = load_model(run / "model.safetensors")
    assert _same(final.blocks[0].state_dict(), n1) and _same(final.blocks[1].state_dict(), n2)

    # LR_1 is N_1+(LR), recomputed here with the functional reference from the saved block
    gen, _ = load_tensors(run / "generated" / "1-2.safetensors")
    lr = load_images(sample_dir / "train", progress=False)
    for i in (0, len(lr) - 1):
        expect = reference_block(n1, lr.inputs[i][None], n_res=1, clamp=True)[0]
        torch.testing.assert_close(gen[f"train.{i}"], expect, atol=1e-5, rtol=0)


def test_report_and_run_directory(sample_dir, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_plan(), sample_dir, run, device="cpu", progress=False)
    for name in (
        "plan.toml",
        "run.json",
        "metrics.jsonl",
        "checkpoints/last.safetensors",
        "blocks/N1.safetensors",
        "blocks/N2.safetensors",
        "model.safetensors",
        "report.md",
    ):
        assert (run / name).is_file(), name
    for png in ("curves.png", "strip.png"):
        assert cv2.imread(str(run / png)) is not None
    report = (run / "report.md").read_text()
    assert "| identity | LR |" in report
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    gen_s = sum(r["seconds"] for r in lines if r["kind"] == "phase" and r["stage"] == "generate")
    assert gen_s > 0 and f"Generate phases took {gen_s:.1f} s of it (" in report
    for name in ("1-1", "1-2", "2-1", "4"):
        assert f"| {name} |" in report
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"phase", "stage", "iter", "lr"} <= set(r) for r in lines)
    assert all("loss" in r for r in lines if r["kind"] == "train")
    assert all("psnr" in r for r in lines if r["kind"] in ("val", "phase", "identity"))
    assert [r["phase"] for r in result.phases] == ["1-1", "1-2", "2-1", "4"]
    # identity baseline is recomputed independently from the files
    test = load_images(sample_dir / "test", progress=False)
    ident = sum(psnr(x, y) for x, y in zip(test.inputs, test.targets)) / len(test)
    assert result.identity["psnr"] == pytest.approx(ident, abs=1e-6)

    again = train(tiny_plan(), sample_dir, run, device="cpu", progress=False)
    assert again.already_finished


def test_resume_refuses_another_plan_or_a_foreign_folder(sample_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_plan(), sample_dir, run, device="cpu", progress=False)
    other = tiny_plan_dict()
    other["phases"][0]["stages"][0]["iters"] = [5]
    with pytest.raises(CheckpointError, match=r"another plan, differing at phases\[0\]\.stages\[0\]\.iters"):
        train(plan_from_dict(other), sample_dir, run, device="cpu", progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a run directory"):
        train(tiny_plan(), sample_dir, tmp_path / "foreign", device="cpu", progress=False)


def _long_plan() -> dict:
    data = tiny_plan_dict()
    data["train"].update(val_every=0, checkpoint_every=10, log_every=2)
    data["phases"][0]["stages"][1]["iters"] = [500, 100]
    return data


def _checkpoint_position(path):
    try:
        _, meta = load_tensors(path)
        return meta["position"]
    except (CheckpointError, KeyError):
        return None


@pytest.fixture(scope="module")
def uninterrupted(sample_dir, tmp_path_factory):
    """The long plan trained without a stop, at the tests' thread count (a module fixture is set
    up before conftest's per-test one sets it); once for both signals and all workers."""

    def build(folder):
        train(plan_from_dict(_long_plan()), sample_dir, folder / "ref", device="cpu", progress=False)

    return once_per_run(tmp_path_factory, "train-uninterrupted", build, threads=THREADS) / "ref"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_resume_after_interruption_equals_an_uninterrupted_run(sig, uninterrupted, sample_dir, tmp_path, capsys):
    plan_path = tmp_path / "plan.toml"
    plan_path.write_text(tomli_w.dumps(_long_plan()))
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mcan_deploy.cli.train",
        "--config",
        str(plan_path),
        "--data",
        str(sample_dir),
        "--out",
        str(run),
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    ckpt = run / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline:
        pos = _checkpoint_position(ckpt) if ckpt.exists() else None
        if pos and pos["phase"] == 0 and pos["stage"] == 1 and pos["iter"] >= 20:
            break
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    pos = _checkpoint_position(ckpt)
    assert pos["phase"] == 0 and pos["stage"] == 1 and 0 < pos["iter"] < 600, "stopped mid-stage"
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "run the same command to resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL

    from mcan_deploy.cli.train import main

    rc, out, err = cli_here(main, cmd[3:], capsys)  # resumed in this process, at the same thread count
    assert rc == 0, err
    assert "run finished" in out

    ref = uninterrupted
    got, _ = load_tensors(run / "model.safetensors")
    want, _ = load_tensors(ref / "model.safetensors")
    assert got.keys() == want.keys()
    for k in want:  # the README promises equality: bitwise, not within a tolerance
        assert torch.equal(got[k], want[k]), f"{k}: a resumed run differs from an uninterrupted one"
    lines = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    got_train = [(r["phase"], r["stage"], r["iter"]) for r in lines(run) if r["kind"] == "train"]
    want_train = [(r["phase"], r["stage"], r["iter"]) for r in lines(ref) if r["kind"] == "train"]
    assert got_train == want_train, "no lost and no repeated metrics lines"

    rc, out, _ = cli_here(main, cmd[3:], capsys)  # nothing left to train
    assert rc == 0 and "already finished" in out


def test_training_loss_falls_and_beats_identity_on_the_sample(sample_dir, tmp_path):
    data = {
        "model": {"n_blocks": 1, "n_resblocks": 2, "n_feats": 16},
        "data": {"patch_size": 48, "batch_size": 8},
        "train": {"log_every": 10, "val_every": 0, "checkpoint_every": 0, "strip_size": 64},
        "phases": [
            {
                "name": "1-1",
                "kind": "train_block",
                "block": 1,
                "init": "orthogonal",
                "stages": [
                    {
                        "name": "adadelta",
                        "optimizer": "adadelta",
                        "iters": [60],
                        "lr": [1.0],
                        "eps": 1e-6,
                        "clamp": False,
                    },
                    {"name": "adam", "optimizer": "adam", "iters": [120], "lr": [2e-4], "clamp": True},
                ],
            }
        ],
    }
    result = train(plan_from_dict(data), sample_dir, tmp_path / "run", device="cpu", progress=False)
    losses = [
        json.loads(x)["loss"]
        for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]
    assert result.phases[-1]["psnr"] > result.identity["psnr"] + 0.3
