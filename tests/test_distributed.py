"""torchrun on CPU (gloo): 2-process training of the demo plan equals one process with the same
global batch, a run resumes with another number of processes, and a 2-process mcan-upscale
writes the same files as one process.

Equal means bitwise here: the one-process reference computes its batch in two chunks
(data.micro_batches = 2) on one thread, which is exactly what two single-threaded DDP processes
compute. Computed in one piece instead, the batch's gradient sums in another order, and over
hundreds of Adadelta steps (whose first updates are nearly sign(gradient)) that difference grows
well past any float tolerance (measured on the full demo plan: see the issue notes)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tomllib

import cv2
import numpy as np
import pytest
import tomli_w
import torch

from mcan_deploy.checkpoint import load_tensors
from mcan_deploy.config import plan_from_dict
from mcan_deploy.distributed import Dist
from mcan_deploy.errors import MCANError
from mcan_deploy.train import TrainingInterrupted, train
from mcan_deploy.train.phases import PhaseRunner

from .helpers import REPO, once_per_run

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)

SHORTEN = 20  # the demo plan's stages, 1/20 as long, to keep CI short (equality holds at any length)
PATCH = 24  # and its patches half as wide (equality holds at any size)
BLOCK = {"n_resblocks": 2, "n_feats": 16}  # and its blocks narrower (equality holds at any width)


def demo_plan_dict(micro_batches: int = 1) -> dict:
    """configs/demo.toml (3 blocks, all four phases) with short stages, small patches and
    blocks of 2 RCAB x 16 features."""
    data = tomllib.loads((REPO / "configs" / "demo.toml").read_text())
    data["model"].update(BLOCK)
    for phase in data["phases"]:
        for stage in phase.get("stages", []):
            stage["iters"] = [max(2, n // SHORTEN) for n in stage["iters"]]
    data["train"].update(log_every=2, val_every=10, checkpoint_every=3)
    data["data"].update(micro_batches=micro_batches, patch_size=PATCH)
    return data


def torchrun(*args: str, n: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _weights(run):
    return load_tensors(run / "model.safetensors")[0]


def _lines(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, sample_dir):
    """One process, one thread, the batch in two chunks (trained once for all workers)."""

    def build(folder):
        train(plan_from_dict(demo_plan_dict(micro_batches=2)), sample_dir, folder / "run", device="cpu", progress=False)

    return once_per_run(tmp_path_factory, "distributed-single-run", build, threads=1) / "run"


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not a[k].equal(b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[0]}: max {(a[bad[0]] - b[bad[0]]).abs().max():.3g}"


def test_two_processes_train_the_demo_plan_like_one(single_run, sample_dir, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(demo_plan_dict()))
    out = tmp_path / "run2"
    proc = torchrun(
        "mcan_deploy.cli.train",
        "--config",
        str(plan),
        "--data",
        str(sample_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    )
    assert proc.stdout.count("mcan-train: run finished") == 1, "only rank 0 prints the summary"
    _assert_bitwise(_weights(single_run), _weights(out))
    la, lb = _lines(single_run), _lines(out)
    assert [(x["kind"], x["phase"], x["iter"]) for x in la] == [(x["kind"], x["phase"], x["iter"]) for x in lb]
    assert [x["loss"] for x in la] == [x["loss"] for x in lb], "the logged loss is the global batch's"
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))


def test_resume_with_another_number_of_processes(single_run, sample_dir, tmp_path):
    """Stopped in one process (mid-phase checkpoint), resumed by two: the same final weights."""
    out = tmp_path / "run"
    calls = {"n": 0}

    def stop_after_11():
        calls["n"] += 1
        return calls["n"] >= 11

    torch.set_num_threads(1)  # restored by the autouse fixture in conftest.py
    with pytest.raises(TrainingInterrupted):
        train(
            plan_from_dict(demo_plan_dict(micro_batches=2)),
            sample_dir,
            out,
            device="cpu",
            progress=False,
            should_stop=stop_after_11,
        )
    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(demo_plan_dict()))  # micro_batches 1: may change on resume
    torchrun(
        "mcan_deploy.cli.train",
        "--config",
        str(plan),
        "--data",
        str(sample_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    )
    _assert_bitwise(_weights(single_run), _weights(out))


def test_two_process_upscale_writes_the_same_files(single_run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        img = np.random.default_rng(i).integers(0, 256, (40 + 3 * i, 37, 3), dtype=np.uint8)
        cv2.imwrite(str(src / f"{i}.png"), img)
    model = single_run / "model.safetensors"
    from mcan_deploy.cli.upscale import main as upscale_main

    assert upscale_main([str(model), str(src), "-o", str(tmp_path / "one"), "--no-progress", "--tile", "32"]) == 0
    # one file is there already, rank 1's (the odd files are rank 1's): it is skipped, not redone
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "3.png").write_bytes(b"kept")
    proc = torchrun(
        "mcan_deploy.cli.upscale", str(model), str(src), "-o", str(tmp_path / "two"), "--no-progress", "--tile", "32"
    )
    assert "4 written, 1 skipped, 0 failed by 2 processes" in proc.stdout, "counts summed over the ranks"
    for i in (0, 1, 2, 4):
        assert (tmp_path / "one" / f"{i}.png").read_bytes() == (tmp_path / "two" / f"{i}.png").read_bytes()
    assert (tmp_path / "two" / "3.png").read_bytes() == b"kept"
    logged = {i for i in range(5) if f"{i}.png ->" in proc.stderr}
    assert logged == {0, 2, 4}, "rank 0 takes every second file and only rank 0 logs below WARNING"


def test_shards_cover_every_item_once():
    items = list(range(11))
    for world in (1, 2, 3, 5):
        shards = [Dist(r, world).shard(items) for r in range(world)]
        assert sorted(x for s in shards for x in s) == items


def test_batch_that_does_not_split_over_the_processes_is_refused(sample_dir, tmp_path):
    with pytest.raises(MCANError, match="data.batch_size = 16 does not split over 3 processes"):
        PhaseRunner(plan_from_dict(demo_plan_dict()), sample_dir, tmp_path / "r", device="cpu", dist=Dist(0, 3, 0))


@pytest.mark.long
def test_sigterm_under_torchrun_stops_every_rank_at_one_checkpoint_then_resumes(
    single_run, sample_dir, tmp_path, caplog
):
    """torchrun passes SIGTERM to every rank, each at its own moment: the stop flag is agreed
    on (all-reduced), so all ranks stop after the same iteration and one checkpoint is written."""
    import signal
    import time

    plan = tmp_path / "plan.toml"
    plan.write_text(tomli_w.dumps(demo_plan_dict()))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mcan_deploy.cli.train",
        "--config",
        str(plan),
        "--data",
        str(sample_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def lines() -> int:
        path = out / "metrics.jsonl"
        return sum(1 for _ in path.open()) if path.exists() else 0

    deadline = time.time() + 120
    while time.time() < deadline and lines() < 4:  # identity + some training lines: mid-phase
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "torchrun reports the stopped workers as failed"
    assert "checkpoint written" in err and "Traceback" not in err.split("checkpoint written")[0][-500:], err[-3000:]
    assert not (out / "model.safetensors").exists()
    # resumed from the ranks' one checkpoint, here in one process computing the global batch in
    # two chunks on one thread, as two DDP ranks do (resuming with another number of processes
    # is its own test): the final weights equal the uninterrupted run's
    torch.set_num_threads(1)  # restored by the autouse fixture in conftest.py
    with caplog.at_level(logging.INFO, logger="mcan_deploy"):
        train(plan_from_dict(demo_plan_dict(micro_batches=2)), sample_dir, out, device="cpu", progress=False)
    assert "resuming" in caplog.text, "from the checkpoint, not from the start"
    _assert_bitwise(_weights(single_run), _weights(out))
