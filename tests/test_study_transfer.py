"""Transfer experiments (configs/study/camera.toml): each label trains on its named folders, starts
from another label's model of the same seed where it says so, and every final model is scored on
every evaluation folder. The numbers are checked against numpy, the run directories and the
trainer's own validation of the same images."""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from pathlib import Path

import numpy as np
import pytest

from mcan_deploy.errors import ConfigError
from mcan_deploy.study import load_experiment

from .helpers import REPO, SAMPLE, cli_here

STUDY = REPO / "configs" / "study"
CAMERA = STUDY / "camera.toml"


@pytest.fixture(scope="module")
def two_cameras(tmp_path_factory) -> dict[str, Path]:
    """Two dataset folders cut from different corners of the bundled crops: two 'cameras'."""
    import cv2

    root = tmp_path_factory.mktemp("cameras")
    folders = {}
    for name, offset in (("nikon", 0), ("iphone", 64)):
        folders[name] = root / name
        for split, count in (("train", 2), ("test", 1)):
            names = sorted(p.name for p in (SAMPLE / split / "HR").iterdir())[:count]
            for kind in ("HR", "LR"):
                (folders[name] / split / kind).mkdir(parents=True)
                for f in names:
                    img = cv2.imread(str(SAMPLE / split / kind / f))
                    cv2.imwrite(str(folders[name] / split / kind / f), img[offset : offset + 96, offset : offset + 96])
    return folders


def _study_here(capsys, *args: str) -> tuple[int, str]:
    """mcan-study in this process (a subprocess costs seconds of imports): (exit code, stderr)."""
    from mcan_deploy.cli.study import main

    rc, _, err = cli_here(main, list(args), capsys)
    return rc, err


def _psnr_np(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((a - b) ** 2, dtype=np.float64)))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.long
def test_camera_experiment_end_to_end(two_cameras, tmp_path, capsys, caplog):
    import cv2

    runs, out = tmp_path / "runs", tmp_path / "out"
    data = [f"--data={n}={p}" for n, p in two_cameras.items()]
    common = [*data, "--runs", str(runs), "--out", str(out), "--max-iters", "2", "--seeds", "0,1", "--no-progress"]
    # in this process the command's log lines reach the log records, not stderr
    caplog.set_level(logging.INFO, logger="mcan_deploy")

    def scored() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring ")]

    # three runs at a time, taking turns (as on a GPU): fine-tuning runs after their sources
    rc, err = _study_here(capsys, str(CAMERA), *common, "--threads", "1", "--pack", "3")
    assert rc == 0, err[-3000:]
    assert scored(), "the first run scores every model on every folder"
    r = json.loads((out / "camera" / "results.json").read_text())
    exp = load_experiment(CAMERA)
    assert set(r["finals"]) == set(exp.evaluate) == {"nikon", "iphone"}
    assert r["data"].keys() == {"nikon", "iphone"}

    def run(label: str, seed: int) -> Path:
        return runs / "cpu-max2" / "camera" / label / f"seed{seed}"

    # each label trained on its own folders
    for label, cond in exp.conditions.items():
        info = json.loads((run(label, 0) / "run.json").read_text())
        trained = info["data"] if isinstance(info["data"], list) else [info["data"]]
        assert trained == [str(two_cameras[n].resolve()) for n in cond.train_on], label
    # fine-tuning starts from the same seed's Nikon model: the recorded hash is that file's
    for label in ("finetune", "finetune_phased"):
        for seed in (0, 1):
            src = json.loads((run(label, seed) / "run.json").read_text())["init_from"]
            model = run("nikon", seed) / "model.safetensors"
            assert {s["path"] for s in src} == {str(model)}
            assert {s["sha256"] for s in src} == {hashlib.sha256(model.read_bytes()).hexdigest()}

    # identity of each folder, by numpy
    for name, folder in two_cameras.items():
        f = next((folder / "test" / "HR").iterdir()).name
        lr, hr = (cv2.imread(str(folder / "test" / k / f)) / 255.0 for k in ("LR", "HR"))
        assert r["identity"][name]["psnr"] == pytest.approx(_psnr_np(lr, hr), abs=1e-6)

    # the score of a model on a folder it validated on is the trainer's own final validation
    # (the 96-px test crops are whole at both eval_max_size and the plans' val_max_size)
    for seed, value in enumerate(r["finals"]["nikon"]["nikon"]["psnr"]["values"]):
        last = [x for x in _metrics(run("nikon", seed)) if x["kind"] == "phase" and x["stage"] != "generate"][-1]
        assert value == pytest.approx(last["psnr"], abs=1e-5)
    for seed in (0, 1):  # two folders trained together: each validated on its own line
        last = [x for x in _metrics(run("both", seed)) if x["kind"] == "phase" and x["stage"] != "generate"][-1]
        assert r["finals"]["nikon"]["both"]["psnr"]["values"][seed] == pytest.approx(last["psnr_data1"], abs=1e-5)
        assert r["finals"]["iphone"]["both"]["psnr"]["values"][seed] == pytest.approx(last["psnr_data2"], abs=1e-5)

    # summaries, gains and contrasts from the per-seed values
    for name in ("nikon", "iphone"):
        for label, f in r["finals"][name].items():
            v = f["psnr"]["values"]
            assert f["psnr"]["mean"] == pytest.approx(statistics.mean(v)) and f["psnr"]["std"] == pytest.approx(
                statistics.stdev(v)
            )
            assert r["gains"][name][label]["values"] == pytest.approx([x - r["identity"][name]["psnr"] for x in v])
        d = r["diffs"][name]["finetune - scratch"]["psnr"]
        ft, sc = r["finals"][name]["finetune"]["psnr"]["values"], r["finals"][name]["scratch"]["psnr"]["values"]
        assert d["diff"] == pytest.approx(statistics.mean(ft) - statistics.mean(sc))
        assert d["higher_in"] == sum(a > b for a, b in zip(ft, sc))
    # budgets at 2 iterations a span: joint fine-tune 2 + 2; phased fine-tune 2 + 2 in its block, 2 joint;
    # the scratch and demo plans 2 + 2 + 2 in each block phase, 2 + 2 joint
    assert r["budgets"]["finetune"]["backprops_per_block"] == [4, 4, 4]
    assert r["budgets"]["finetune_phased"]["backprops_per_block"] == [6, 6, 6]
    assert (
        r["budgets"]["scratch"]["backprops_per_block"] == [10, 10, 10] == r["budgets"]["nikon"]["backprops_per_block"]
    )
    table = (out / "camera" / "table.md").read_text()
    assert "On the **iphone** test pairs" in table and "finetune - scratch" in table
    assert (out / "camera" / "transfer.png").read_bytes()[:4] == b"\x89PNG"

    # a rerun trains nothing, scores nothing again (cached by model hash) and gives the same numbers
    caplog.clear()
    rc, err = _study_here(capsys, str(CAMERA), *common, "--aggregate-only", "-v")
    assert rc == 0, err[-2000:]
    assert not scored(), scored()
    assert json.loads((out / "camera" / "results.json").read_text())["finals"] == r["finals"]

    # a fine-tune whose source has changed since (retrained) is not reused
    info_path = run("finetune", 0) / "run.json"
    info = json.loads(info_path.read_text())
    info["init_from"][0]["sha256"] = "0" * 64
    info_path.write_text(json.dumps(info))
    rc, err = _study_here(capsys, str(CAMERA), *common, "--threads", "1")
    assert rc == 1 and "started from an earlier" in err


def test_transfer_errors_are_one_line(tmp_path, two_cameras, capsys):
    text = CAMERA.read_text().replace('"cpu/', f'"{STUDY}/cpu/').replace('"../', f'"{STUDY}/../')
    bad = tmp_path / "bad.toml"
    cases = {
        'start_from = "nikon"': (
            'start_from = "both"',
            r"conditions\.finetune\.start_from = 'both' must name a label listed before it",
        ),
        '"finetune - scratch",': ('"finetune - nope",', r"contrasts entry 'finetune - nope' should be"),
        '[conditions.both]\ntrain_on = ["nikon", "iphone"]': (
            "",
            r"labels .* and \[conditions\] labels .* must be the same, in the same order",
        ),
        'train_on = ["nikon", "iphone"]\n\n#': (
            'train_on = ["nikon", "nikon"]\n\n#',
            r"should be a list of distinct folder names",
        ),
        'evaluate = ["iphone", "nikon"]': (
            "evaluate = []",
            r"experiment\.evaluate = \[\] should be a list of distinct folder names",
        ),
        "eval_max_size = 512": ("eval_max_size = 0", r"eval_max_size = 0 must be an integer >= 1"),
    }
    for old, (new, message) in cases.items():
        assert old in text, old
        bad.write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=message):
            load_experiment(bad)
    budget = (STUDY / "budget.toml").read_text().replace('"cpu/', f'"{STUDY}/cpu/').replace('"../', f'"{STUDY}/../')
    bad.write_text(budget.replace("seeds = [0, 1, 2]", 'seeds = [0, 1, 2]\nevaluate = ["x"]'))
    with pytest.raises(ConfigError, match=r"are for kind = 'transfer'"):
        load_experiment(bad)

    # the command: a missing named folder, an unnamed one for a transfer experiment, one given twice
    # (in this process: these fail before any training)
    rc, err = _study_here(capsys, str(CAMERA), f"--data=nikon={two_cameras['nikon']}", "--runs", str(tmp_path / "r"))
    assert rc == 1 and "needs --data iphone=DIR" in err
    rc, err = _study_here(
        capsys, str(STUDY / "budget.toml"), f"--data=nikon={two_cameras['nikon']}", "--runs", str(tmp_path / "r")
    )
    assert rc == 1 and "needs --data DIR" in err
    # a fine-tuning plan for a label that names no start_from, before anything trains
    bad.write_text(text.replace('start_from = "nikon"', ""))
    rc, err = _study_here(
        capsys, str(bad), *(f"--data={n}={p}" for n, p in two_cameras.items()), "--runs", str(tmp_path / "r1")
    )
    assert rc == 1 and "give label 'finetune' a start_from" in err
    assert not (tmp_path / "r1").exists()
    runs = tmp_path / "r2"  # a wrong folder fails before anything trains
    rc, err = _study_here(
        capsys,
        str(CAMERA),
        f"--data=nikon={two_cameras['nikon']}",
        f"--data=iphone={tmp_path / 'no'}",
        "--runs",
        str(runs),
    )
    assert rc == 1 and "expected a train/ and a test/ folder" in err and not runs.exists()
    rc, err = _study_here(capsys, str(CAMERA), "--data=nikon=a", "--data=nikon=b")
    assert rc == 1 and "--data nikon=DIR given twice" in err
