"""Packed runs (train/packed.py): K runs trained together give what each gives alone, bitwise on a
CPU, and stop and resume together."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from mcan_deploy.checkpoint import load_tensors
from mcan_deploy.errors import MCANError, TrainingInterrupted
from mcan_deploy.study.runs import plan_for_seed
from mcan_deploy.train import train
from mcan_deploy.train.packed import PackedRun, Turns, train_packed

from .conftest import THREADS
from .helpers import TINY_MODEL, once_per_run, tiny_plan


def _runs(root, sample_dir):
    """Three runs: two seeds of the tiny plan and one of a wider model (runs of different shapes
    pack too)."""
    plans = [tiny_plan(), plan_for_seed(tiny_plan(), 7), tiny_plan(model={**TINY_MODEL, "n_feats": 12})]
    return [PackedRun(p, sample_dir, root / f"run{k}", f"run{k}") for k, p in enumerate(plans)]


def _losses(run_dir):
    """Every metrics line without its timings: the losses, rates, validation scores, in order."""
    timing = {"seconds", "val_seconds", "sec_per_iter", "data_share", "packed"}
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines and all("loss" in r for r in lines)
    return [{k: v for k, v in r.items() if k not in timing} for r in lines]


def _assert_same_run(got, want, resumed=False):
    """Bitwise the same weights and metrics lines; after a resume, a train line's loss is the mean
    over the iterations of its log window since the resume (as for a solo run resumed), so there
    only the validation lines and the train lines' positions are compared."""
    a, _ = load_tensors(got / "model.safetensors")
    b, _ = load_tensors(want / "model.safetensors")
    assert a.keys() == b.keys()
    for k in b:
        assert torch.equal(a[k], b[k]), f"{got.name}: {k} differs from the solo run"
    la, lb = _losses(got), _losses(want)
    if resumed:
        la, lb = ([r if r["kind"] != "train" else (r["phase"], r["stage"], r["iter"]) for r in x] for x in (la, lb))
    assert la == lb


@pytest.fixture(scope="module")
def solo(sample_dir, tmp_path_factory):
    """The three runs trained one at a time (the reference), at the tests' thread count (a module
    fixture is set up before conftest's per-test one sets it); trained once for all workers."""

    def build(root):
        for r in _runs(root, sample_dir):
            train(r.plan, r.data_root, r.out_dir, device="cpu", progress=False)

    return _runs(once_per_run(tmp_path_factory, "packed-solo", build, threads=THREADS), sample_dir)


def test_packed_runs_equal_solo_runs_bitwise(solo, sample_dir, tmp_path):
    runs = _runs(tmp_path, sample_dir)
    order = []
    results = train_packed(
        runs, device="cpu", progress=False, should_stop=lambda: order.append(threading.current_thread().name) or False
    )
    assert [r.paths.root for r in results] == [r.out_dir for r in runs]
    for got, want in zip(runs, solo):
        _assert_same_run(got.out_dir, want.out_dir)
    # the runs took turns, one iteration each, round robin: not one after another
    assert order[:6] == ["mcan-run:run0", "mcan-run:run1", "mcan-run:run2"] * 2
    # each train line says its time per iteration was shared by three runs
    lines = [json.loads(x) for x in (runs[0].out_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r.get("packed") for r in lines if r["kind"] == "train"} == {3}


def test_packed_runs_stop_together_and_resume_to_the_solo_result(solo, sample_dir, tmp_path):
    runs = _runs(tmp_path, sample_dir)
    calls = []

    def stop_after_fifteen():  # a Ctrl-C in the 1-1 adam stage of every run
        calls.append(1)
        return len(calls) > 15

    with pytest.raises(TrainingInterrupted, match="run0, run1, run2"):
        train_packed(runs, device="cpu", progress=False, should_stop=stop_after_fifteen)
    for r in runs:
        _, meta = load_tensors(r.out_dir / "checkpoints" / "last.safetensors")
        assert meta["position"]["phase"] == 0 and meta["position"]["iter"] > 0, "stopped mid-phase, at a checkpoint"
        assert not (r.out_dir / "model.safetensors").exists()
    train_packed(runs, device="cpu", progress=False)
    for got, want in zip(runs, solo):
        _assert_same_run(got.out_dir, want.out_dir, resumed=True)


def test_a_failing_run_leaves_the_others_to_finish(solo, sample_dir, tmp_path):
    runs = _runs(tmp_path, sample_dir)
    bad = PackedRun(runs[1].plan, tmp_path / "no-such-data", tmp_path / "bad", "bad")
    with pytest.raises(MCANError, match="no-such-data"):
        train_packed([runs[0], bad, runs[2]], device="cpu", progress=False)
    _assert_same_run(runs[0].out_dir, solo[0].out_dir)
    _assert_same_run(runs[2].out_dir, solo[2].out_dir)


def test_packed_runs_need_distinct_names_and_folders(sample_dir, tmp_path):
    runs = _runs(tmp_path, sample_dir)
    with pytest.raises(MCANError, match="distinct"):
        train_packed([runs[0], runs[0]], device="cpu", progress=False)


def test_a_stop_before_a_run_starts_leaves_it_unstarted(sample_dir, tmp_path):
    runs = _runs(tmp_path, sample_dir)
    with pytest.raises(TrainingInterrupted, match="run0, run1, run2"):
        train_packed(runs, device="cpu", progress=False, should_stop=lambda: True)
    assert not any(r.out_dir.exists() for r in runs)


def test_log_lines_name_the_run_by_its_thread():
    from mcan_deploy.cli.common import RUN_THREAD
    from mcan_deploy.train.packed import THREAD_PREFIX

    assert RUN_THREAD == THREAD_PREFIX, "cli/common.py names a packed run's log lines by this prefix"


def test_turns_go_round_robin_and_skip_a_run_that_left():
    turns, seen = Turns(3), []

    def body(k, steps):
        turns.take(k)
        for _ in range(steps):
            seen.append(k)
            turns.pass_on(k)
        turns.leave(k)

    threads = [threading.Thread(target=body, args=(k, n)) for k, n in enumerate([3, 1, 2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert seen == [0, 1, 2, 0, 2, 0]


def test_job_groups_keep_a_fine_tuning_run_after_its_source():
    from pathlib import Path

    from mcan_deploy.study.runs import Job, job_groups

    plan = tiny_plan()
    jobs = [
        Job(label, seed, Path(f"{label}{seed}"), plan, (Path("d"),), "base" if label == "tuned" else "")
        for seed in (0, 1)
        for label in ("tuned", "base", "other")
    ]
    name = lambda groups: [[f"{j.label}{j.seed}" for j in g] for g in groups]  # noqa: E731
    assert name(job_groups(jobs, 1)) == [["base0"], ["tuned0"], ["other0"], ["base1"], ["tuned1"], ["other1"]]
    assert name(job_groups(jobs, 3)) == [["base0", "other0", "base1"], ["tuned0", "tuned1", "other1"]]
    assert name(job_groups(jobs, 10)) == [["base0", "other0", "base1", "other1"], ["tuned0", "tuned1"]]


def test_train_cli_seeds_make_one_run_directory_each_and_log_which_run(sample_dir, tmp_path, capsys):
    import subprocess
    import sys

    import tomli_w

    from .helpers import REPO, tiny_plan_dict

    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(tiny_plan_dict()))
    cmd = [sys.executable, "-m", "mcan_deploy.cli.train", "--config", str(plan), "--data", str(sample_dir)]
    cmd += ["--out", str(tmp_path / "runs"), "--device", "cpu", "--no-progress", "--max-iters", "1"]
    proc = subprocess.run(
        [*cmd, "--seeds", "3,5", "--pack", "2"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for seed in (3, 5):
        run = tmp_path / "runs" / f"seed{seed}"
        assert json.loads((run / "run.json").read_text())["sampler_seed"] == seed
        assert f"run finished: {run}" in proc.stdout
        assert f"[seed{seed}] " in proc.stderr, "each packed run's log lines name it"
    from mcan_deploy.cli.train import main  # the two refusals, in this process

    with pytest.raises(SystemExit) as exc:
        main([*cmd[3:], "--seeds", "1,1"])
    assert exc.value.code == 2 and "distinct" in capsys.readouterr().err
    assert main([*cmd[3:], "--pack", "2"]) == 1 and "--pack applies to --seeds" in capsys.readouterr().err
