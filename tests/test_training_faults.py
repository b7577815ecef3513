"""Training under faults: a NaN loss (retry with lower learning rates, or stop), NaN weights
never saved, a checkpoint for another model refused, a write cut short leaving the old file."""

from __future__ import annotations

import json
import os

import pytest
import torch

import mcan_deploy.train.loop as loop_mod
from mcan_deploy.checkpoint import load_model, load_tensors, save_tensors
from mcan_deploy.config import plan_from_dict
from mcan_deploy.errors import CheckpointError, MCANError, NonFiniteError, TrainingDiverged
from mcan_deploy.train import TrainingInterrupted, train

from .helpers import tiny_plan_dict


@pytest.fixture
def nan_at(monkeypatch):
    """Make the loss NaN at the given loss calls (1-based, counted over the whole run)."""
    calls = {"n": 0, "at": set()}
    real = loop_mod.loss_function

    def loss_function(name):
        crit = real(name)

        def poisoned(pred, target):
            calls["n"] += 1
            loss = crit(pred, target)
            return loss * float("nan") if calls["n"] in calls["at"] else loss

        return poisoned

    monkeypatch.setattr(loop_mod, "loss_function", loss_function)
    return calls


def _lines(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _events(run):
    return [json.loads(ln) for ln in (run / "events.jsonl").read_text().splitlines()]


def test_nan_loss_restores_the_last_checkpoint_and_retries_with_lower_rates(nan_at, sample_dir, tmp_path):
    # phase 1-1: adadelta 4 iterations (loss calls 1-4; checkpoints after 3 and at the stage end),
    # then adam; call 6 is adam's iteration 2, so the last good checkpoint is the adadelta stage end
    nan_at["at"] = {6}
    run = tmp_path / "run"
    result = train(plan_from_dict(tiny_plan_dict()), sample_dir, run, device="cpu", progress=False)
    lines = _lines(run)
    (event,) = _events(run)
    assert event["event"] == "nonfinite" and event["phase"] == "1-1"
    assert event["restart"] == {"phase": 0, "stage": 1, "iter": 0} and event["lr_scale"] == pytest.approx(0.1)
    adam = [ln for ln in lines if ln["kind"] == "train" and ln["phase"] == "1-1" and ln["stage"] == "adam"]
    assert [ln["iter"] for ln in adam] == [2, 4, 5], "lines after the checkpoint are replayed, not doubled"
    assert adam[0]["lr"] == pytest.approx(1e-5) and adam[-1]["lr"] == pytest.approx(1e-6), "x0.1 for the phase"
    later = [ln for ln in lines if ln["kind"] == "train" and ln["phase"] == "2-1"]
    assert later[0]["lr"] == pytest.approx(1e-4), "the next phase starts at its own rates again"
    model = load_model(run / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [p["phase"] for p in result.phases] == ["1-1", "1-2", "2-1", "4"]
    assert "phase 1-1: stage adam, iteration 2: loss is nan" in (run / "report.md").read_text()


def test_nan_loss_with_stop_policy_keeps_the_good_checkpoint_and_names_the_fix(nan_at, sample_dir, tmp_path):
    nan_at["at"] = {6}
    plan = tiny_plan_dict()
    plan["train"]["on_nonfinite"] = "stop"
    run = tmp_path / "run"
    with pytest.raises(
        TrainingDiverged,
        match=r"phase 1-1: stage adam, iteration 2: loss is nan .*"
        r"stopped \(train\.on_nonfinite = 'stop'\).*lower this phase's learning rates",
    ):
        train(plan_from_dict(plan), sample_dir, run, device="cpu", progress=False)
    tensors, meta = load_tensors(run / "checkpoints" / "last.safetensors")
    assert meta["position"] == {"phase": 0, "stage": 1, "iter": 0}
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    # the advice works: lower the phase's learning rates, run the same command, it resumes there
    nan_at["at"] = set()
    plan["phases"][0]["stages"][1]["lr"] = [5e-5, 5e-6]
    result = train(plan_from_dict(plan), sample_dir, run, device="cpu", progress=False)
    assert not result.already_finished and (run / "model.safetensors").is_file()
    assert "5e-05" in (run / "plan.toml").read_text(), "the run records the plan it went on with"
    adam = [ln for ln in _lines(run) if ln["kind"] == "train" and ln["phase"] == "1-1" and ln["stage"] == "adam"]
    assert adam[0]["iter"] == 2 and adam[0]["lr"] == pytest.approx(5e-5)
    other = tiny_plan_dict()
    other["data"]["patch_size"] = 16  # anything but rates and the NaN policy is still refused
    with pytest.raises(CheckpointError, match="another plan, differing at data.patch_size"):
        train(plan_from_dict(other), sample_dir, run, device="cpu", progress=False)


def test_nan_before_any_training_checkpoint_keeps_the_identity_baseline(nan_at, sample_dir, tmp_path):
    nan_at["at"] = {2}  # phase 1-1, adadelta iteration 2: only the run's first checkpoint exists
    run = tmp_path / "run"
    result = train(plan_from_dict(tiny_plan_dict()), sample_dir, run, device="cpu", progress=False)
    assert result.identity.get("psnr", 0) > 20, "the identity line survives the restart"
    assert [ln["kind"] for ln in _lines(run)].count("identity") == 1
    assert _events(run)[0]["restart"] == {"phase": 0, "stage": 0, "iter": 0}


def test_sigkill_inside_a_checkpoint_write_then_resume(sample_dir, tmp_path):
    """A real kill (os._exit inside fsync, after the new bytes are written, before the rename) of
    the first checkpoint write that replaces a mid-stage one: the surviving checkpoint holds
    optimiser and sampler state at iteration 3 of a stage, so the resume must restore both (a
    restart from zero, or either state lost, ends with other weights). The previous checkpoint
    loads, the temp file is cleaned up on resume, and the run finishes bitwise equal to one never
    killed."""
    import subprocess
    import sys
    import textwrap

    import tomli_w

    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(tiny_plan_dict()))
    script = textwrap.dedent(f"""
        import os, sys
        from mcan_deploy.config import load_plan
        from mcan_deploy.train import train
        from mcan_deploy.checkpoint import load_tensors
        last = {str(tmp_path / "run" / "checkpoints" / "last.safetensors")!r}
        real = os.fsync
        def fsync(fd):
            # the write that would replace a checkpoint taken mid-stage, with optimiser state
            if os.path.exists(last):
                tensors, meta = load_tensors(last)
                if meta["position"]["iter"] > 0 and "optim" in meta:
                    os._exit(9)
            real(fd)
        os.fsync = fsync
        train(load_plan({str(plan)!r}), {str(sample_dir)!r}, {str(tmp_path / "run")!r}, device="cpu", progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    ck = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ck.iterdir() if p.name.endswith(".tmp")], "the kill left a temp file"
    tensors, meta = load_tensors(ck / "last.safetensors")  # the previous checkpoint is intact
    assert meta["position"] == {"phase": 0, "stage": 0, "iter": 3}, meta["position"]
    assert "rng.sampler" in tensors and any(k.startswith("optim.") for k in tensors), "state to restore"
    train(plan_from_dict(tiny_plan_dict()), sample_dir, tmp_path / "run", device="cpu", progress=False)
    assert not [p for p in ck.iterdir() if p.name.endswith(".tmp")]
    train(plan_from_dict(tiny_plan_dict()), sample_dir, tmp_path / "clean", device="cpu", progress=False)
    a, _ = load_tensors(tmp_path / "run" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "clean" / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)


def test_retries_are_bounded(nan_at, sample_dir, tmp_path):
    nan_at["at"] = set(range(1, 1000))  # every loss is NaN
    plan = tiny_plan_dict()
    plan["train"]["nonfinite_retries"] = 2
    with pytest.raises(TrainingDiverged, match="2 retries with lower learning rates did not help"):
        train(plan_from_dict(plan), sample_dir, tmp_path / "run", device="cpu", progress=False)
    events = _events(tmp_path / "run")
    assert [e["lr_scale"] for e in events] == pytest.approx([0.1, 0.01])


def test_nan_tensors_are_never_saved_and_the_previous_file_stays(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_tensors(path, {"w": torch.ones(3)}, {"v": 1})
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match="not written, 1 tensor"):
        save_tensors(path, {"w": torch.tensor([1.0, float("inf"), 0.0]), "i": torch.arange(3)}, {"v": 2})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ck.safetensors"]


def test_a_write_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    """The process dies (here: an exception that is not an OSError) between writing the new
    bytes and the rename: the old file is intact and loadable, no half file is left."""
    path = tmp_path / "ck.safetensors"
    save_tensors(path, {"w": torch.ones(3)}, {"v": 1})

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        save_tensors(path, {"w": torch.zeros(3)}, {"v": 2})
    monkeypatch.undo()
    tensors, meta = load_tensors(path)
    assert meta == {"v": 1} and tensors["w"].equal(torch.ones(3))
    assert os.listdir(tmp_path) == ["ck.safetensors"]


def test_full_disk_leaves_no_partial_file_and_names_the_file(tmp_path, monkeypatch):
    import errno

    from mcan_deploy.io import write_image

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(MCANError, match=r"out\.png: cannot write \(No space left on device\)"):
        write_image(tmp_path / "out.png", torch.rand(8, 8, 3).numpy())
    assert os.listdir(tmp_path) == []


def test_checkpoint_of_another_model_is_refused_with_both_values(sample_dir, tmp_path):
    plan = tiny_plan_dict()
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(plan_from_dict(plan), sample_dir, run, device="cpu", progress=False, should_stop=lambda: True)
    # someone edits the run's plan.toml and the plan the same way: the checkpoint still knows
    plan["model"]["n_feats"] = 16
    import tomli_w

    (run / "plan.toml").write_text(tomli_w.dumps(plan))
    with pytest.raises(
        CheckpointError,
        match=r"written for another model, differing at model\.n_feats "
        r"\(8 in the run, 16 now\)",
    ):
        train(plan_from_dict(plan), sample_dir, run, device="cpu", progress=False)
