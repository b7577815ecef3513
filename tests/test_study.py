"""The reproduction study (mcan-study, configs/study/): every plan runs, and the numbers in
results.json agree with what the run directories recorded and with hand computations."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from mcan_deploy.checkpoint import save_model
from mcan_deploy.config import load_plan, with_init_from
from mcan_deploy.errors import ConfigError
from mcan_deploy.model import build_model
from mcan_deploy.stats import paired, summary, t_critical, welch
from mcan_deploy.study import load_experiment, plan_for_seed
from mcan_deploy.study.budget import backprops_per_block, block_forward_flops_per_pixel, step_flops
from mcan_deploy.study.runs import SMOKE_BATCH
from mcan_deploy.train import train

from .helpers import REPO, SAMPLE, cli_here

STUDY = REPO / "configs" / "study"
EXPERIMENTS = sorted(STUDY.glob("*.toml"))
# the report's experiments train on one folder (--data DIR); transfer experiments on named ones
ONE_FOLDER = [e for e in EXPERIMENTS if load_experiment(e).kind != "transfer"]
ALL_PLANS = sorted({p for e in EXPERIMENTS for scale in load_experiment(e).plans.values() for p in scale.values()})


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory) -> Path:
    """Two 128x128 training pairs and one test pair cut from the bundled City100 crops: large
    enough for the 96-pixel patches of the patch study."""
    import cv2

    root = tmp_path_factory.mktemp("tiny_pairs")
    for split, count in (("train", 2), ("test", 1)):
        names = sorted(p.name for p in (SAMPLE / split / "HR").iterdir())[:count]
        for kind in ("HR", "LR"):
            (root / split / kind).mkdir(parents=True)
            for name in names:
                img = cv2.imread(str(SAMPLE / split / kind / name))
                cv2.imwrite(str(root / split / kind / name), img[:128, :128])
    return root


@pytest.fixture(scope="module")
def small_pairs(tiny_pairs, tmp_path_factory) -> Path:
    """``tiny_pairs`` cut to 40x40: enough for 16-pixel patches, and the paper-size plans'
    validation and generate phases cost 1/10 of what they cost on 128x128."""
    import cv2

    root = tmp_path_factory.mktemp("small_pairs")
    for src in tiny_pairs.rglob("*.png"):
        dst = root / src.relative_to(tiny_pairs)
        dst.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst), cv2.imread(str(src))[:40, :40])
    return root


def test_the_study_covers_every_experiment_of_the_issue():
    names = {load_experiment(e).name: load_experiment(e).kind for e in EXPERIMENTS}
    assert {k: names.get(k) for k in ("toy", "budget", "phases", "patch", "inverse")} == {
        "toy": "compare",
        "budget": "compare",
        "phases": "phases",
        "patch": "patch",
        "inverse": "inverse",
    }
    for e in EXPERIMENTS:
        exp = load_experiment(e)
        assert len(exp.seeds) >= 3, f"{e}: at least 3 seeds"
        want = {"cpu"} if exp.kind == "transfer" else {"cpu", "full"}  # the report's claims at its own scale too
        assert set(exp.plans) == want, f"{e}: plans for {sorted(want)}"


@pytest.mark.parametrize("plan_path", ALL_PLANS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_study_plan_trains_a_few_iterations(plan_path, small_pairs, tmp_path):
    """Every plan an experiment names, at both scales, with each span cut to one iteration and a
    batch of two 16x16 patches: the plans cannot rot."""
    plan = plan_for_seed(load_plan(plan_path), 1, max_iters=1)
    plan = dataclasses.replace(plan, data=dataclasses.replace(plan.data, batch_size=2, patch_size=16))
    if any(p.init == "from:" for p in plan.phases):  # a fine-tuning plan: from a model of its shape
        save_model(tmp_path / "start.safetensors", build_model(plan.model))
        plan = with_init_from(plan, str(tmp_path / "start.safetensors"))
    result = train(plan, small_pairs, tmp_path / "run", device="cpu", progress=False)
    assert (tmp_path / "run" / "model.safetensors").exists()
    trained = [p.name for p in plan.phases]
    assert [r["phase"] for r in result.phases] == trained
    assert all(math.isfinite(r["psnr"]) for r in result.phases)


def test_equal_budget_of_the_cpu_plans_is_the_reports_count():
    """Every parameter sees the same number of back-propagations in the phased plan and in its
    single back-propagation baseline (report sec. 4: 15000 + 10000 = 25000; here 1/20 of it)."""
    phased, single = (load_plan(STUDY / "cpu" / f"mcan_{n}.toml") for n in ("phased", "single"))
    assert backprops_per_block(phased) == [750 + 500] * 3 == backprops_per_block(single)
    assert backprops_per_block(load_plan(REPO / "configs" / "paper.toml")) == [25000] * 3
    assert backprops_per_block(load_plan(REPO / "configs" / "baseline.toml")) == [25000] * 3
    toy, toy_single = (load_plan(STUDY / "cpu" / f"toy_{n}.toml") for n in ("multiblock", "single"))
    assert backprops_per_block(toy) == [1500, 1500] == backprops_per_block(toy_single)


def test_flops_against_a_hand_count():
    """One block's forward FLOPs per pixel: 2 x (multiply-adds of every 3x3 convolution), plus the
    channel-attention MLP per image; a training step is forward + backward."""
    cfg = load_plan(STUDY / "cpu" / "mcan_phased.toml").model
    f, r = cfg.n_feats, cfg.n_resblocks
    macs = 9 * (3 * f + 2 * r * f * f + f * f + f * 3)
    ca_per_image = 2 * r * 2 * f * (f // cfg.reduction)
    assert block_forward_flops_per_pixel(cfg) == pytest.approx(2 * macs + ca_per_image / 32**2, rel=1e-9)
    fwd = 2 * macs * 16 * 48 * 48
    step = step_flops(cfg, False, 16, 48)
    # backward: the weight gradient of every conv, and the input gradient of all but the first
    assert step == pytest.approx(fwd + fwd + (fwd - 2 * 9 * 3 * f * 16 * 48 * 48), rel=1e-3)
    assert step_flops(cfg, True, 16, 48) == pytest.approx(3 * step + 2 * 2 * 9 * 3 * f * 16 * 48 * 48, rel=1e-3)


def test_statistics_against_hand_computed_values():
    s = summary([1.0, 2.0, 3.0])
    assert (s["mean"], s["std"]) == (2.0, 1.0)
    w = welch([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])  # variances 1 and 4, n = 3
    assert w["diff"] == -2.0 and w["se"] == pytest.approx(math.sqrt(5 / 3))
    assert w["df"] == pytest.approx((5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2))
    assert w["t_crit"] == 4.303 and not w["exceeds_spread"]
    p = paired([2.0, 3.0, 4.5], [1.0, 2.0, 3.0])  # differences 1, 1, 1.5
    assert p["diff"] == pytest.approx(7 / 6) and p["se"] == pytest.approx(statistics.stdev([1, 1, 1.5]) / math.sqrt(3))
    assert p["df"] == 2 and p["exceeds_spread"]  # t = 7.0 > 4.303
    assert t_critical(1) == 12.706 and t_critical(2.9) == 4.303 and t_critical(100) == 1.96
    assert welch([1.0, 1.0], [1.0, 1.0])["exceeds_spread"] is False


def _psnr_np(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2, dtype=np.float64)
    return float(-10 * np.log10(mse))


@pytest.mark.long
def test_mcan_study_end_to_end(tiny_pairs, tmp_path, capsys):
    """All five experiments through the command, each span cut to two iterations, two seeds. The
    numbers in results.json are checked against the run directories and a numpy PSNR."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "mcan_deploy.cli.study",
        *map(str, ONE_FOLDER),
        "--data",
        str(tiny_pairs),
        "--runs",
        str(runs),
        "--out",
        str(out),
        "--max-iters",
        "2",
        "--seeds",
        "0,1",
        "--no-progress",
        "--threads",
        "1",
        "--pack",  # two runs at a time, taking turns (as on a GPU): the same numbers as one by one
        "2",
    ]
    from mcan_deploy.cli.study import main

    rc, _, err = cli_here(main, cmd[3:], capsys)  # in this process: a subprocess re-imports for seconds
    assert rc == 0, err[-3000:]
    results = {e.stem: json.loads((out / load_experiment(e).name / "results.json").read_text()) for e in ONE_FOLDER}
    for r in results.values():
        assert r["max_iters"] == 2 and r["seeds"] == [0, 1] and r["command"].startswith("mcan-study ")
        for plot in r["plots"]:
            png = out / r["experiment"]["name"] / plot
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        table = (out / r["experiment"]["name"] / "table.md").read_text()
        assert "identity" in table and r["experiment"]["title"] in table
    # trained two at a time: the budget table says its times were shared
    assert (
        "± " in (out / "budget" / "table.md").read_text()
        and "† trained together" in (out / "budget" / "table.md").read_text()
    )

    # the identity baseline: LR against HR of the test image, by numpy
    name = next((tiny_pairs / "test" / "HR").iterdir()).name
    import cv2

    lr, hr = (cv2.imread(str(tiny_pairs / "test" / k / name)) / 255.0 for k in ("LR", "HR"))
    for r in results.values():
        assert r["identity"]["psnr"] == pytest.approx(_psnr_np(lr, hr), abs=1e-6)

    # compare: the finals are the last phase's validation of each run, mean and sample std
    budget = results["budget"]
    for label, runs_of in budget["runs"].items():
        finals = []
        for run in runs_of:
            lines = [json.loads(x) for x in (Path(run["run"]) / "metrics.jsonl").read_text().splitlines()]
            finals.append([x for x in lines if x["kind"] == "phase" and x["stage"] != "generate"][-1]["psnr"])
        assert budget["finals"][label]["psnr"]["mean"] == pytest.approx(statistics.mean(finals), abs=1e-12)
        assert budget["finals"][label]["psnr"]["std"] == pytest.approx(statistics.stdev(finals), abs=1e-12)
    d = budget["diffs"]["phased"]["psnr"]
    phased_v, single_v = budget["finals"]["phased"]["psnr"]["values"], budget["finals"]["single"]["psnr"]["values"]
    assert d["diff"] == pytest.approx(statistics.mean(phased_v) - statistics.mean(single_v))
    assert d["higher_in"] == sum(p > q for p, q in zip(phased_v, single_v)) and d["seeds"] == 2
    # cut to 2 iterations a span: each block phase 2 + 2 + 2, phase 4 2 + 2; single 2 + 2
    assert budget["budgets"]["phased"]["backprops_per_block"] == [10, 10, 10]
    assert budget["budgets"]["single"]["backprops_per_block"] == [4, 4, 4]
    assert budget["budgets"]["phased"]["generate_flops"] > 0 == budget["budgets"]["single"]["generate_flops"]

    # phases: one row per trained phase, gains paired against the row before
    ph = results["phases"]
    assert list(ph["phases"]) == ["1-1", "2-1", "3", "4"]
    first = ph["phases"]["1-1"]
    assert first["gain"]["psnr"]["diff"] == pytest.approx(first["psnr"]["mean"] - ph["identity"]["psnr"])

    # inverse: the whole chain of the final N is what phase 4 validated (two code paths, one model)
    inv = results["inverse"]
    assert [row["output"] for row in inv["prefixes"]["phased"]] == ["N1(LR)", "N2(N1(LR))", "N3(N2(N1(LR)))"]
    assert inv["prefixes"]["phased"][-1]["psnr"]["mean"] == pytest.approx(
        budget["finals"]["phased"]["psnr"]["mean"], abs=1e-5
    )

    # patch: ordered by patch size, pixels per update follow it
    pa = results["patch"]
    assert list(pa["finals"]) == ["p24", "p48", "p96"]
    b = SMOKE_BATCH  # the smoke run's batch (the plans' own is 16)
    assert [pa["budgets"][k]["pixels_per_update"] for k in pa["finals"]] == [b * 24**2, b * 48**2, b * 96**2]

    # a rerun trains nothing and remakes the same numbers
    rc, _, err = cli_here(main, [str(STUDY / "budget.toml"), *cmd[3 + len(ONE_FOLDER) :], "--aggregate-only"], capsys)
    assert rc == 0, err[-2000:]
    assert json.loads((out / "budget" / "results.json").read_text())["finals"] == budget["finals"]


def test_unfinished_runs_and_bad_experiment_files_are_one_line_errors(tmp_path, tiny_pairs, capsys):
    bad = tmp_path / "bad.toml"
    text = (STUDY / "budget.toml").read_text().replace('"cpu/', f'"{STUDY}/cpu/').replace('"../', f'"{STUDY}/../')
    bad.write_text(text.replace('baseline = "single"', 'baseline = "nope"'))
    with pytest.raises(ConfigError, match=r"bad\.toml: experiment\.baseline = 'nope' is not a label"):
        load_experiment(bad)
    bad.write_text(text.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2]\nsed = 3"))
    with pytest.raises(ConfigError, match=r"unknown keys \['sed'\]"):
        load_experiment(bad)
    bad.write_text(text.replace("cpu/mcan_single.toml", "cpu/missing.toml"))
    with pytest.raises(ConfigError, match=r"plans\.cpu\.single = .*missing\.toml.*no such plan"):
        load_experiment(bad)

    from mcan_deploy.cli.study import main  # in this process: a subprocess re-imports for seconds

    budget = [str(STUDY / "budget.toml"), "--data", str(tiny_pairs)]
    rc, _, err = cli_here(
        main, [*budget, "--runs", str(tmp_path / "r"), "--out", str(tmp_path / "o"), "--aggregate-only"], capsys
    )
    assert rc == 1 and "run missing or unfinished" in err
    rc, _, err = cli_here(main, [*budget, "--scale", "gpu"], capsys)
    assert rc == 1 and "no [plans.gpu]" in err
    with pytest.raises(SystemExit) as exc:
        main([*budget, "--seeds", "a,b"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--seeds 'a,b'" in err and "Traceback" not in err
