"""Training the (plan, seed) runs of an experiment, and reading back what they recorded."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Plan, cap_iterations, load_plan, with_init_from
from ..errors import StudyError
from .spec import Experiment

log = logging.getLogger(__name__)

# mcan-study --data: one folder (the one-dataset experiments), or NAME=DIR folders by name (transfer
# experiments); the unnamed folder is the key ""
Data = str | Path | Mapping[str, str | Path]


def data_folders(data: Data) -> dict[str, Path]:
    """``--data`` as folders by name ("" for the unnamed one)."""
    if isinstance(data, (str, Path)):
        return {"": Path(data)}
    return {name: Path(d) for name, d in data.items()}


def named_folders(exp: Experiment, data: Data) -> dict[str, Path]:
    """``--data`` by name, checked to hold every folder the experiment trains or scores on; a
    missing one is a ``StudyError`` naming the fix."""
    folders = data_folders(data)
    missing = [n for n in (exp.folder_names() if exp.kind == "transfer" else [""]) if n not in folders]
    if missing:
        want = " ".join(f"--data {n}=DIR" for n in missing) if exp.kind == "transfer" else "--data DIR"
        given = ", ".join(f"{n}=" if n else "an unnamed DIR" for n in folders) or "none"
        raise StudyError(f"{exp.source}: experiment '{exp.name}' needs {want} (given: {given})")
    return folders


def training_folders(exp: Experiment, label: str, data: Data) -> list[Path]:
    """The folders one label of the experiment trains on (see ``named_folders``)."""
    folders = named_folders(exp, data)
    return [folders[n] for n in (exp.conditions[label].train_on if exp.kind == "transfer" else [""])]


SMOKE_BATCH = 2  # a smoke run's batch: its runs check that each plan runs, not what it learns


def plan_for_seed(plan: Plan, seed: int, max_iters: int | None = None) -> Plan:
    """The plan with ``train.seed`` set (initialisation and patch draws follow it); with
    ``max_iters``, every span of iterations is cut to at most that many and the batch to
    ``SMOKE_BATCH`` pairs (a smoke run)."""
    plan = dataclasses.replace(plan, train=dataclasses.replace(plan.train, seed=seed))
    return plan if max_iters is None else cap_iterations(plan, max_iters, max_batch=SMOKE_BATCH)


def scale_dir(scale: str, max_iters: int | None = None) -> str:
    """Smoke runs (``max_iters``) live apart from real ones: a run directory holds one plan."""
    return scale if max_iters is None else f"{scale}-max{max_iters}"


def run_dir(runs_root: str | Path, scale: str, plan_path: str | Path, seed: int, max_iters: int | None = None) -> Path:
    """Where one (plan, seed) run lives: ``RUNS/<scale>/<plan stem>/seed<k>``."""
    return Path(runs_root) / scale_dir(scale, max_iters) / Path(plan_path).stem / f"seed{seed}"


def label_dir(
    exp: Experiment, runs_root: str | Path, scale: str, label: str, seed: int, max_iters: int | None = None
) -> Path:
    """A run of the experiment: shared by plan for one-dataset experiments; for a transfer
    experiment, whose labels train one plan on different folders, ``RUNS/<scale>/<name>/<label>/seed<k>``."""
    if exp.kind == "transfer":
        return Path(runs_root) / scale_dir(scale, max_iters) / exp.name / label / f"seed{seed}"
    return run_dir(runs_root, scale, exp.plan_paths(scale)[label], seed, max_iters)


@dataclass(frozen=True)
class Job:
    """One (label, seed) run of an experiment, ready to train: its plan, folders and directory,
    and the label whose model of the same seed it fine-tunes (``after``), if any."""

    label: str
    seed: int
    out: Path
    plan: Plan
    roots: tuple[Path, ...]
    after: str = ""
    source: Path | None = None

    @property
    def data_root(self) -> Path | list[Path]:
        """What ``train`` takes: the folder, or the list of folders."""
        return self.roots[0] if len(self.roots) == 1 else list(self.roots)


def job_groups(jobs: list[Job], pack: int) -> list[list[Job]]:
    """``jobs`` in groups of at most ``pack`` trained together, in their order, a fine-tuning run
    in a later group than the run it starts from (with ``pack = 1``: one at a time, in order, a
    fine-tuning run moved after its source where it was listed before it). A group ends when its
    slowest run does."""
    groups, pending = [], list(jobs)
    while pending:
        waiting = {(j.label, j.seed) for j in pending}
        group = [j for j in pending if not (j.after and (j.after, j.seed) in waiting)][:pack]
        if not group:
            raise StudyError(f"start_from labels form a circle: {', '.join(sorted({j.label for j in pending}))}")
        groups.append(group)
        pending = [j for j in pending if j not in group]
    return groups


def run_experiment(
    exp: Experiment,
    scale: str,
    data: Data,
    runs_root: str | Path,
    seeds: list[int] | None = None,
    device: str = "auto",
    progress: bool = True,
    max_iters: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    pack: int = 1,
) -> None:
    """Train every (plan, seed) of the experiment that is not finished yet, seed by seed, so that an
    interrupted study has whole seeds; with ``pack`` > 1, that many runs at a time train together
    on the device (``train.packed``). A finished run is found and skipped by the trainer."""
    from ..data import split_dirs
    from ..train import train
    from ..train.packed import PackedRun, train_packed

    paths = exp.plan_paths(scale)
    folders = {label: training_folders(exp, label, data) for label in paths}
    for root in {r for roots in folders.values() for r in roots} | set(data_folders(data).values()):
        split_dirs(root)  # a wrong folder fails before any training, not after hours of it
    plans = {label: load_plan(p) for label, p in paths.items()}
    for label, plan in plans.items():
        if any(p.init == "from:" for p in plan.phases) and not _start_from(exp, label):
            raise StudyError(
                f"{paths[label]}: a fine-tuning plan (init = 'from:'); give label '{label}' a start_from in "
                f"[conditions.{label}] of {exp.source}"
            )
    jobs = []
    for seed in seeds if seeds is not None else exp.seeds:
        for label in paths:
            plan, start, source = plan_for_seed(plans[label], seed, max_iters), _start_from(exp, label), None
            if start:  # fine-tuning: the same seed's model of another label
                source = label_dir(exp, runs_root, scale, start, seed, max_iters) / "model.safetensors"
                plan = with_init_from(plan, str(source))
            out = label_dir(exp, runs_root, scale, label, seed, max_iters)
            jobs.append(Job(label, seed, out, plan, tuple(folders[label]), start, source))
    for group in job_groups(jobs, pack):
        for job in group:
            if job.source is not None:
                _check_source(job.out, job.source)
            log.info("%s: %s, seed %d -> %s", exp.name, job.label, job.seed, job.out)
        if len(group) == 1:
            job = group[0]
            train(job.plan, job.data_root, job.out, device=device, progress=progress, should_stop=should_stop)
        else:
            runs = [PackedRun(j.plan, j.data_root, j.out, f"{j.label}/seed{j.seed}") for j in group]
            train_packed(runs, device, progress, should_stop)


def _start_from(exp: Experiment, label: str) -> str:
    return exp.conditions[label].start_from if label in exp.conditions else ""


def _check_source(run: Path, source: Path) -> None:
    """A fine-tuning run already started must have started from the source as it is now: a source
    retrained since would leave a run built from a model that no longer exists."""
    from ..io import file_sha256

    info = run / "run.json"
    if not info.exists() or not source.exists():
        return
    recorded = {s["sha256"] for s in json.loads(info.read_text()).get("init_from", [])}
    if recorded and recorded != {file_sha256(source)}:
        raise StudyError(
            f"{run}: started from an earlier {source} (its SHA-256 differs now); delete {run} to fine-tune again"
        )


@dataclass
class RunData:
    """What one finished run recorded, as the analyses need it."""

    label: str
    seed: int
    path: Path
    plan: Plan
    identity: dict[str, Any]  # validation metrics of LR against HR
    phase_ends: list[dict[str, Any]]  # one record per phase (train and generate), in order
    curve: list[dict[str, Any]]  # every validation of a trained network, in order
    train_seconds: float  # training iterations only (from the train lines)
    generate_seconds: float  # generate phases (LR_i = N_i+(LR_{i-1}) over train and test)
    data_roots: list[Path]  # the folders it trained on
    packed: int = 1  # the most runs it shared the device with (mcan-study --pack), itself included

    @property
    def data_root(self) -> Path:
        return self.data_roots[0]

    @property
    def final(self) -> dict[str, Any]:
        """Validation of the finished network (the last trained phase)."""
        return [r for r in self.phase_ends if r["stage"] != "generate"][-1]

    def best_psnr(self) -> float:
        """Highest validation PSNR of the last trained phase (what the report's fig. 7 quotes;
        chosen on the test set, so optimistic)."""
        last = self.final["phase"]
        return max(r["psnr"] for r in self.curve if r["phase"] == last)


def collect(path: Path, label: str, seed: int) -> RunData:
    """Read a finished run directory; an unfinished or missing one is a ``StudyError``."""
    from ..train.report import stage_times
    from ..train.rundir import read_metrics

    if not (path / "model.safetensors").exists():
        raise StudyError(
            f"{path}: run missing or unfinished (no model.safetensors); run the study "
            "without --aggregate-only to train it"
        )
    records = read_metrics(path / "metrics.jsonl")
    identity = next((r for r in records if r["kind"] == "identity"), None)
    if identity is None:
        raise StudyError(f"{path / 'metrics.jsonl'}: no identity line; the run directory is damaged")
    phase_ends = [r for r in records if r["kind"] == "phase"]
    curve = [r for r in records if r["kind"] in ("val", "phase") and r["stage"] != "generate"]
    info = json.loads((path / "run.json").read_text())
    data = info["data"] if isinstance(info["data"], list) else [info["data"]]
    return RunData(
        label=label,
        seed=seed,
        path=path,
        plan=load_plan(path / "plan.toml"),
        identity=identity,
        phase_ends=phase_ends,
        curve=curve,
        train_seconds=sum(v["seconds"] for v in stage_times(records).values()),
        generate_seconds=sum(r.get("seconds", 0.0) for r in phase_ends if r["stage"] == "generate"),
        data_roots=[Path(d) for d in data],
        packed=max((r.get("packed", 1) for r in records if r["kind"] == "train"), default=1),
    )


def collect_experiment(
    exp: Experiment, scale: str, runs_root: str | Path, seeds: list[int] | None = None, max_iters: int | None = None
) -> dict[str, list[RunData]]:
    """Every run of the experiment, by label, in seed order."""
    seeds = seeds if seeds is not None else exp.seeds
    return {
        label: [collect(label_dir(exp, runs_root, scale, label, s, max_iters), label, s) for s in seeds]
        for label in exp.plan_paths(scale)
    }
