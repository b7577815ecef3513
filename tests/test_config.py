"""Phase plans: the shipped TOML files hold the report's numbers, and bad plans fail clearly."""

from __future__ import annotations

import pytest

from mcan_deploy.config import ModelConfig, StageConfig, dump_plan, load_plan, plan_from_dict
from mcan_deploy.errors import ConfigError

from .helpers import REPO, tiny_plan_dict

CONFIGS = sorted((REPO / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_plans_load_and_round_trip(path, tmp_path):
    plan = load_plan(path)
    out = tmp_path / "plan.toml"
    out.write_text(dump_plan(plan))
    assert load_plan(out) == plan


def test_paper_plan_is_the_report_schedule():
    plan = load_plan(REPO / "configs" / "paper.toml")
    assert plan.model == ModelConfig(n_blocks=3, n_resblocks=16, n_feats=64, reduction=4, clamp=True)
    assert (plan.data.patch_size, plan.data.batch_size, plan.data.val_max_size) == (48, 16, 1500)
    kinds = [(p.name, p.kind, p.block, p.init) for p in plan.phases]
    assert kinds == [
        ("1-1", "train_block", 1, "orthogonal"),
        ("1-2", "generate", 1, "keep"),
        ("2-1", "train_block", 2, "inherit"),
        ("2-2", "generate", 2, "keep"),
        ("3", "train_block", 3, "inherit"),
        ("4", "train_joint", 0, "keep"),
    ]
    for p in plan.phases:
        if p.kind == "train_block":
            ada, adam = p.stages
            assert (ada.optimizer, ada.iters, ada.lr, ada.rho, ada.eps, ada.clamp) == (
                "adadelta",
                [2000],
                [1.0],
                0.9,
                1e-6,
                False,
            )
            assert (adam.optimizer, adam.iters, adam.lr, adam.betas, adam.eps, adam.clamp) == (
                "adam",
                [3000, 10000],
                [1e-4, 1e-5],
                [0.9, 0.999],
                1e-8,
                True,
            )
            assert p.total_iters == 15000
            assert all(s.loss == "l1" for s in p.stages)
    (joint,) = plan.phases[-1].stages
    assert (joint.iters, joint.lr) == ([5000, 5000], [1e-4, 1e-5])


def test_baseline_and_toy_budgets():
    base = load_plan(REPO / "configs" / "baseline.toml")
    (stage,) = base.phases[0].stages
    assert base.phases[0].kind == "train_joint" and (stage.iters, stage.lr) == ([5000, 20000], [1e-4, 1e-5])
    toy, toy_base = load_plan(REPO / "configs" / "toy.toml"), load_plan(REPO / "configs" / "toy_baseline.toml")
    assert toy.model.kind == toy_base.model.kind == "toy"
    assert (toy.data.patch_size, toy.data.batch_size) == (61, 64)
    # every parameter sees 1500 back-propagations on both sides (report sec. 3.1)
    per_block = [p.total_iters for p in toy.phases if p.kind == "train_block"]
    joint = sum(p.total_iters for p in toy.phases if p.kind == "train_joint")
    assert per_block == [1000, 1000] and joint == 500
    assert toy_base.phases[0].total_iters == 1500


def test_unknown_key_names_key_and_file(tmp_path):
    data = tiny_plan_dict()
    data["phases"][0]["stages"][0]["learning_rate"] = 1.0
    import tomli_w

    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError, match=r"bad\.toml.*unknown key 'learning_rate'"):
        load_plan(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["model"].update(n_feats="64"), "should be of type int"),
        (lambda d: d["model"].update(kind="rcan"), "not one of"),
        (lambda d: d["model"].update(rcab_impl="cuda"), r"rcab_impl = 'cuda' is not one of \['torch', 'triton'\]"),
        (lambda d: d["phases"][0].update(block=5), "block = 5 must be in 1..2"),
        (lambda d: d["phases"][0].update(init="inherit"), "needs block >= 2"),
        (lambda d: d["phases"][0]["stages"][1].update(lr=[1e-4]), "same length"),
        (lambda d: d["model"].update(reduction=3), "not divisible"),
        (lambda d: d.update(phases=[]), "no \\[\\[phases\\]\\]"),
        (lambda d: d["train"].update(log_every=0), "log_every = 0"),
        (lambda d: d["data"].update(batch_size=0), "batch_size = 0 must be >= 1"),
        (lambda d: d["data"].update(micro_batches=3), "batch_size = 4 does not split into data.micro_batches = 3"),
        (lambda d: d["train"].update(on_nonfinite="ignore"), "on_nonfinite = 'ignore' is not one of"),
        (lambda d: d["train"].update(nonfinite_lr_factor=1.5), "nonfinite_lr_factor = 1.5 in \\(0, 1\\)"),
    ],
)
def test_invalid_plans(mutate, message):
    data = tiny_plan_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=message):
        plan_from_dict(data, "p.toml")


def test_not_toml(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="x.toml: not valid TOML"):
        load_plan(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_plan(tmp_path / "missing.toml")


def test_lr_schedule_steps_down():
    s = StageConfig(name="a", iters=[3, 2], lr=[1e-4, 1e-5])
    assert [s.lr_at(i) for i in range(5)] == [1e-4] * 3 + [1e-5] * 2
    assert s.total_iters == 5


def test_rcab_impl_is_checked_outside_plans_too():
    assert ModelConfig(rcab_impl="triton").rcab_impl == "triton"
    with pytest.raises(ConfigError, match="model.rcab_impl = 'fused'"):
        ModelConfig(rcab_impl="fused")  # type: ignore[arg-type]


def test_a_plan_with_a_base_changes_only_its_own_keys(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.toml").write_text(dump_plan(plan_from_dict(tiny_plan_dict())))
    (tmp_path / "sub" / "bf16.toml").write_text(
        'base = "../base.toml"\ndescription = "the tiny plan in bf16"\n[train]\nprecision = "bf16"\n'
    )
    base, child = load_plan(tmp_path / "base.toml"), load_plan(tmp_path / "sub" / "bf16.toml")
    assert child.train.precision == "bf16" and child.description == "the tiny plan in bf16"
    assert child.train.val_every == base.train.val_every == 4, "the base's other [train] keys stay"
    assert child.phases == base.phases and child.model == base.model and child.data == base.data
    loop = tmp_path / "loop.toml"
    loop.write_text('base = "loop2.toml"\n')
    (tmp_path / "loop2.toml").write_text('base = "loop.toml"\n')
    with pytest.raises(ConfigError, match=r"loop2.toml: base = 'loop.toml' leads back to itself"):
        load_plan(loop)
    (tmp_path / "gone.toml").write_text('base = "missing.toml"\n[train]\nseed = 1\n')
    with pytest.raises(ConfigError, match=r"gone.toml: base = 'missing.toml': no such file"):
        load_plan(tmp_path / "gone.toml")
    (tmp_path / "typo.toml").write_text('base = "base.toml"\n[train]\nprecison = "bf16"\n')
    with pytest.raises(
        ConfigError, match=r"typo.toml \(with its base .*base.toml\): unknown key 'precison' in \[train\]"
    ):
        load_plan(tmp_path / "typo.toml")


def test_the_precision_study_plans_differ_from_their_base_in_precision_only():
    import dataclasses

    study = REPO / "configs" / "study"
    base = load_plan(study / "cpu" / "mcan_phased.toml")
    for name in ("fp32", "bf16"):
        plan = load_plan(study / "cpu" / f"mcan_phased_{name}.toml")
        assert plan.train.precision == name
        same = dataclasses.replace(
            plan, description=base.description, train=dataclasses.replace(plan.train, precision="auto")
        )
        assert same == base
