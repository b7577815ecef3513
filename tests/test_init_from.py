"""Starting phases from trained weights (``init = "from:PATH"``, ``mcan-train --init-from``): the
weights are the file's, mismatched, missing and hostile files are one-line errors, the run records
its source, and a fine-tuning run resumes bitwise."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mcan_deploy.checkpoint import load_model, load_tensors, save_block, save_model
from mcan_deploy.cli.train import main as train_main
from mcan_deploy.config import ModelConfig, plan_from_dict, with_init_from
from mcan_deploy.errors import CheckpointError, ConfigError, MCANError
from mcan_deploy.model import build_model
from mcan_deploy.train import TrainingInterrupted, train
from mcan_deploy.train.init_from import load_into

from .helpers import TINY_MODEL, tiny_plan_dict
from .test_bad_input import _Payload


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained-looking model file (random weights) of the tiny plan's shape, and one block."""
    d = tmp_path_factory.mktemp("src")
    torch.manual_seed(7)
    model = build_model(ModelConfig(**TINY_MODEL))
    save_model(d / "model.safetensors", model)
    save_block(d / "N2.safetensors", model.blocks[1], model.config, 2)
    return d, model


def finetune_plan(init: str, kind: str = "train_joint", block: int = 0, iters: int = 4) -> dict:
    data = tiny_plan_dict()
    phase = {
        "name": "ft",
        "kind": kind,
        "init": init,
        "stages": [{"name": "adam", "optimizer": "adam", "iters": [iters], "lr": [1e-4], "clamp": True}],
    }
    if kind == "train_block":
        phase["block"] = block
    data["phases"] = [phase]
    data["train"].update(val_every=0, checkpoint_every=3)
    return data


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_started_weights_are_the_files(source):
    d, trained = source
    fresh = build_model(trained.config)
    assert not states_equal(fresh, trained)
    plan = plan_from_dict(finetune_plan(f"from:{d / 'model.safetensors'}"), "<t>")
    load_into(fresh, plan.phases[0])
    assert states_equal(fresh, trained)
    for path, block in ((d / "model.safetensors", 2), (d / "N2.safetensors", 1)):  # block 2 of N; a block file
        other = build_model(trained.config)
        plan = plan_from_dict(finetune_plan(f"from:{path}", "train_block", block), "<t>")
        keep = other.blocks[2 - block]  # the block the phase does not train keeps its weights
        before = {k: v.clone() for k, v in keep.state_dict().items()}
        load_into(other, plan.phases[0])
        assert states_equal(other.blocks[block - 1], trained.blocks[1])
        assert all(torch.equal(v, before[k]) for k, v in keep.state_dict().items())


def test_mismatch_missing_hostile_and_wrong_kind_are_one_line_errors(source, tmp_path, sample_dir):
    d, _ = source
    wide = tmp_path / "wide.safetensors"
    save_model(wide, build_model(ModelConfig(**{**TINY_MODEL, "n_feats": TINY_MODEL["n_feats"] * 2})))
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    cases = {
        wide: rf"model.n_feats is {TINY_MODEL['n_feats'] * 2} in the file and {TINY_MODEL['n_feats']} in the plan",
        tmp_path / "missing.safetensors": "no such model file",
        evil: "corrupt or truncated",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            train(
                plan_from_dict(finetune_plan(f"from:{path}"), "<t>"),
                sample_dir,
                tmp_path / "run",
                device="cpu",
                progress=False,
            )
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "run").exists(), "checked before anything ran"
    with pytest.raises(CheckpointError, match="one block .* needs a whole model file"):
        train(
            plan_from_dict(finetune_plan(f"from:{d / 'N2.safetensors'}"), "<t>"),
            sample_dir,
            tmp_path / "r2",
            device="cpu",
            progress=False,
        )
    with pytest.raises(MCANError, match="pass mcan-train --init-from PATH"):
        train(plan_from_dict(finetune_plan("from:"), "<t>"), sample_dir, tmp_path / "r3", device="cpu", progress=False)
    with pytest.raises(ConfigError, match="'from:PATH'"):
        plan_from_dict(finetune_plan("pretrained"), "<t>")


def test_init_from_fills_the_plans_slots_or_its_first_training_phase(source):
    d, _ = source
    path = str(d / "model.safetensors")
    slotted = with_init_from(plan_from_dict(finetune_plan("from:"), "<t>"), path)
    assert slotted.phases[0].init == f"from:{path}"
    phased = with_init_from(plan_from_dict(tiny_plan_dict(), "<t>"), path)
    assert [p.init for p in phased.phases] == [f"from:{path}", "keep", "inherit", "keep"]


def test_cli_run_records_its_source_and_resumes_bitwise(source, sample_dir, tmp_path, capsys):
    d, _ = source
    import tomli_w

    plan = tmp_path / "ft.toml"
    plan.write_text(tomli_w.dumps(finetune_plan("from:", iters=9)))
    src = str(d / "model.safetensors")
    base = ["--config", str(plan), "--data", str(sample_dir), "--init-from", src, "--device", "cpu", "--no-progress"]
    assert train_main([*base, "--out", str(tmp_path / "whole")]) == 0
    info = json.loads((tmp_path / "whole" / "run.json").read_text())
    (rec,) = info["init_from"]
    assert rec["phase"] == "ft" and rec["path"] == src and len(rec["sha256"]) == 64
    assert src in (tmp_path / "whole" / "report.md").read_text()

    calls = {"n": 0}

    def stop_after_5():
        calls["n"] += 1
        return calls["n"] >= 5

    loaded = with_init_from(plan_from_dict(finetune_plan("from:", iters=9), "<t>"), src)
    with pytest.raises(TrainingInterrupted):
        train(loaded, sample_dir, tmp_path / "cut", device="cpu", progress=False, should_stop=stop_after_5)
    _, meta = load_tensors(tmp_path / "cut" / "checkpoints" / "last.safetensors")
    assert meta["position"]["iter"] > 0, "stopped mid-stage, after the init"
    assert train_main([*base, "--out", str(tmp_path / "cut")]) == 0
    a = load_model(tmp_path / "whole" / "model.safetensors")
    b = load_model(tmp_path / "cut" / "model.safetensors")
    assert states_equal(a, b), "a resumed fine-tuning run equals an uninterrupted one bitwise"
