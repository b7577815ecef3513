"""The phase runner: executes a plan's phases in order, resumably, and writes the run directory.

Run directory (ARCHITECTURE.md, "Contracts"):
``plan.toml`` (the resolved plan), ``run.json`` (data folder, device, versions), ``metrics.jsonl``,
``checkpoints/last.safetensors``, ``blocks/N<i>.safetensors``, ``model.safetensors``,
``report.md``, ``curves.png``, ``strip.png``.

Resuming: the checkpoint records the position (phase, stage, iteration), the weights, the
optimiser's and the sampler's state and how many metrics lines were written by then, so running
the same command again continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from .. import __version__
from ..checkpoint import (
    check_finite,
    config_to_dict,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    save_block,
    save_model,
    save_tensors,
)
from ..config import InitScheme, PhaseConfig, Plan, StageConfig, dump_plan, load_plan, plan_to_dict
from ..data import PairedImages, PatchSampler, load_images, split_dirs
from ..distributed import Dist
from ..errors import CheckpointError, DataError, MCANError, NonFiniteError, TrainingDiverged
from ..metrics import psnr, ssim
from ..model import MCAN, build_model, inherit_block, init_block
from ..runners import resolve_device
from .init_from import check_sources, load_into
from .loop import LoopCallbacks, run_stage
from .step import StepOptions, make_optimizer

log = logging.getLogger(__name__)


class TrainingInterrupted(MCANError):
    """Training stopped on request (Ctrl-C, SIGTERM) after writing a checkpoint."""


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run lives."""

    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.toml"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"  # append-only: never cut on resume

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.safetensors"

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def strip(self) -> Path:
        return self.root / "strip.png"

    def block(self, i: int) -> Path:
        return self.root / "blocks" / f"N{i}.safetensors"

    def generated(self, phase: str) -> Path:
        return self.root / "generated" / f"{phase}.safetensors"


@dataclass
class RunResult:
    """What a finished (or already finished) run produced."""

    paths: RunPaths
    already_finished: bool
    phases: list[dict[str, Any]]  # one summary line per phase, as in metrics.jsonl
    identity: dict[str, Any]  # validation metrics of LR against HR


@dataclass
class Position:
    """Where in the plan a run stands: the next iteration to run is ``iter`` of stage ``stage``
    of phase ``phase`` (all 0-based); ``phase == len(phases)`` means finished."""

    phase: int = 0
    stage: int = 0
    iter: int = 0


class MetricsLog:
    """Append-only JSON-lines log that can be cut back to a checkpoint's line count. Only the
    main process writes (``enabled``); the others keep the same count for their checkpoints."""

    def __init__(self, path: Path, keep_lines: int, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        lines = path.read_text().splitlines() if path.exists() else []
        if enabled and len(lines) > keep_lines:  # lines written after the checkpoint are replayed on resume
            path.write_text("".join(line + "\n" for line in lines[:keep_lines]))
        self.count = min(len(lines), keep_lines)

    def write(self, **record: Any) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.count += 1

    def records(self) -> list[dict[str, Any]]:
        from .report import read_metrics

        return read_metrics(self.path)


class _Discard:
    def write(self, _text: str) -> None: ...


def rank_seed(seed: int, rank: int) -> int:
    """The global torch seed of one process under torchrun (recorded in run.json)."""
    return seed + 1_000_003 * rank


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """A generator seeded with ``seed``, with the global RNG forked and seeded too, so that
    initialisation is the same on a fresh run and on a resumed one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def _first_difference(a: Any, b: Any, key: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else k)
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{key}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{key} ({a!r} in the run, {b!r} now)"


def _what_trains(plan: Plan) -> dict[str, Any]:
    """The plan without what may change when a run resumes: how RCABs run (torch or Triton) and
    how many chunks a batch is computed in, the learning rates (the remedy after a NaN stop) and
    the NaN policy itself."""
    data = plan_to_dict(plan)
    data.get("model", {}).pop("rcab_impl", None)
    for key in ("on_nonfinite", "nonfinite_retries", "nonfinite_lr_factor"):
        data.get("train", {}).pop(key, None)
    data.get("data", {}).pop("micro_batches", None)  # how a batch is computed, not what it is
    data.get("data", {}).pop("val_batch_pixels", None)
    for key in ("precision", "channels_last", "optimizer_impl", "cuda_graphs"):  # how each step runs
        data.get("train", {}).pop(key, None)
    for phase in data.get("phases", []):
        for stage in phase.get("stages", []):
            stage.pop("lr", None)
    return data


def _batches(images: Sequence[torch.Tensor], max_pixels: int) -> list[list[int]]:
    """Indices of ``images`` in runs of one shape, each run at most ``max_pixels`` pixels (a
    larger image alone), in the original order within each shape."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(images):
        by_shape.setdefault(tuple(t.shape), []).append(i)
    out: list[list[int]] = []
    for shape, idx in by_shape.items():
        per = max(1, max_pixels // (shape[-1] * shape[-2]))
        out += [idx[k : k + per] for k in range(0, len(idx), per)]
    return out


class PhaseRunner:
    """Runs one plan into one run directory. Holds no state beyond that run."""

    def __init__(
        self,
        plan: Plan,
        data_root: str | Path | Sequence[str | Path],
        out_dir: str | Path,
        device: str = "auto",
        progress: bool = True,
        should_stop: Callable[[], bool] = lambda: False,
        dist: Dist | None = None,
    ) -> None:
        self.plan = plan
        roots = [data_root] if isinstance(data_root, (str, Path)) else list(data_root)
        if not roots:
            raise MCANError("no data folder given: pass --data (one or more) or set data.dirs in the plan")
        self.data_roots = [Path(r).resolve() for r in roots]
        self.data_root = self.data_roots[0]
        self.val_roots = [Path(d).resolve() for d in plan.data.val_dirs]  # validated on, not trained on
        self.folders = self.data_roots + self.val_roots
        # run.json's "data": one folder as before, several as a list
        self.data_record: str | list[str] = (
            str(self.data_root) if len(roots) == 1 else [str(r) for r in self.data_roots]
        )
        self.paths = RunPaths(Path(out_dir))
        self.device = resolve_device(device)
        self.dist = dist or Dist()
        self.main = self.dist.is_main
        self.progress = progress and self.main
        # under torchrun a stop request (SIGTERM reaches every rank, not at the same iteration)
        # stops all ranks at the same iteration
        self.should_stop = (lambda: self.dist.any(should_stop())) if self.dist.enabled else should_stop
        self.stage_offsets = self._stage_offsets()
        unset = [p.name for p in plan.phases if p.init == "from:"]
        if unset:
            raise MCANError(
                f"phase(s) {', '.join(unset)} start from a trained model file: pass mcan-train --init-from PATH"
            )
        self.init_sources = check_sources(plan.phases, plan.model)  # read and checked before any training
        self.step_options, why = StepOptions.for_run(
            plan.train, self.device, plan.data.micro_batches, self.dist.enabled
        )
        log.info("training steps: %s (precision: %s)", self.step_options.describe(), why)
        if plan.data.batch_size % (self.dist.world * plan.data.micro_batches):
            raise MCANError(
                f"data.batch_size = {plan.data.batch_size} does not split over {self.dist.world} "
                f"processes x data.micro_batches = {plan.data.micro_batches}; use a batch size "
                "divisible by --nproc_per_node x nodes x micro_batches"
            )

    # ----- set-up and resume ---------------------------------------------------------------
    def _stage_offsets(self) -> dict[tuple[int, int], int]:
        """Global step at which each (phase, stage) starts: the x axis of the curves."""
        offsets, step = {}, 0
        for pi, phase in enumerate(self.plan.phases):
            for si, stage in enumerate(phase.stages):
                offsets[(pi, si)] = step
                step += stage.total_iters
            offsets[(pi, len(phase.stages))] = step
        return offsets

    def _prepare_dir(self) -> None:
        """Check (every rank, before anyone writes) and create (rank 0) the run directory."""
        self.dist.barrier()
        changed = self._check_dir()
        self.dist.barrier()
        if self.main and not self.paths.plan.exists():
            self._create_dir()
        elif self.main:
            from ..io import atomic_write_bytes, remove_stale_temp_files

            remove_stale_temp_files(self.paths.root)  # left by a process killed mid-write
            if changed:  # learning rates or the NaN policy: the run records the plan it goes on with
                log.warning("%s: resuming with a changed plan (first change: %s)", self.paths.plan, changed)
                atomic_write_bytes(self.paths.plan, dump_plan(self.plan).encode())
        self.dist.barrier()

    def _check_dir(self) -> str | None:
        """Refuse a run directory this plan cannot use; returns the first allowed change of the
        plan (learning rates, NaN policy) against the run's, if any."""
        p = self.paths
        if p.plan.exists():
            old = load_plan(p.plan)
            # how the RCABs run (torch or Triton) may change between sessions; the plan may not
            diff = _first_difference(_what_trains(old), _what_trains(self.plan))
            if diff:
                raise CheckpointError(
                    f"{p.plan}: this run was started with another plan, differing at {diff}; "
                    "rerun with the same plan to resume, or pass a new --out"
                )
            info = json.loads(p.run_info.read_text()) if p.run_info.exists() else {}
            if info.get("data") not in (None, self.data_record):
                raise CheckpointError(
                    f"{p.run_info}: this run trains on {info['data']}, not {self.data_record}; "
                    "pass the same --data to resume, or a new --out"
                )
            return _first_difference(plan_to_dict(old), plan_to_dict(self.plan))
        if p.root.exists() and any(p.root.iterdir()):
            raise CheckpointError(
                f"{p.root}: folder exists and is not a run directory (no plan.toml); pass an empty or new --out"
            )
        return None

    def _create_dir(self) -> None:
        p = self.paths
        p.root.mkdir(parents=True, exist_ok=True)
        from ..io import atomic_write_bytes

        seed = self.plan.train.seed
        atomic_write_bytes(
            p.run_info,
            json.dumps(
                {
                    "data": self.data_record,
                    "val_data": [str(r) for r in self.val_roots],
                    "device": str(self.device),
                    "torch": torch.__version__,
                    "mcan_deploy": __version__,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    # every rank draws the same global batch from the shared sampler seed and trains on
                    # its own slice of it; the per-rank seeds serve any other randomness of a process
                    "world_size": self.dist.world,
                    "sampler_seed": seed,
                    "rank_seeds": [rank_seed(seed, r) for r in range(self.dist.world)],
                    "init_from": [dataclasses.asdict(src) for src in self.init_sources],
                },
                indent=2,
            ).encode(),
        )
        atomic_write_bytes(p.plan, dump_plan(self.plan).encode())

    def _load_position(self, model: MCAN) -> tuple[Position, dict[str, Any] | None, int]:
        """Restore weights from the last checkpoint; returns the position, the checkpoint's
        tensors and meta for the optimiser/sampler, and the metrics line count to keep."""
        if not self.paths.checkpoint.exists():
            return Position(), None, 0
        tensors, meta = load_tensors(self.paths.checkpoint)
        want = config_to_dict(self.plan.model)
        if meta.get("model", want) != want:
            diff = _first_difference(meta["model"], want)
            raise CheckpointError(
                f"{self.paths.checkpoint}: written for another model, differing at "
                f"model.{diff}; pass a new --out for this plan"
            )
        try:
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as exc:  # shapes or names do not fit this plan's model
            raise CheckpointError(
                f"{self.paths.checkpoint}: does not fit this plan's model "
                f"({str(exc).splitlines()[0][:200]}); pass a new --out"
            ) from None
        pos = Position(**meta["position"])
        log.info(
            "resuming %s at phase %s, stage %d, iteration %d",
            self.paths.root,
            self.plan.phases[pos.phase].name if pos.phase < len(self.plan.phases) else "end",
            pos.stage,
            pos.iter,
        )
        return pos, {"tensors": tensors, "meta": meta}, meta["metrics_lines"]

    def _save_checkpoint(
        self,
        model: MCAN,
        pos: Position,
        metrics: MetricsLog,
        optimizer: torch.optim.Optimizer | None = None,
        sampler: PatchSampler | None = None,
        lr_scale: float = 1.0,
    ) -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        meta: dict[str, Any] = {
            "position": dataclasses.asdict(pos),
            "metrics_lines": metrics.count,
            "model": config_to_dict(self.plan.model),
            "lr_scale": lr_scale,
        }
        if optimizer is not None:
            opt_tensors, meta["optim"] = optimizer_to_flat(optimizer)
            tensors.update(opt_tensors)
        if sampler is not None:
            tensors["rng.sampler"] = sampler.get_state()
        check_finite(tensors, self.paths.checkpoint)  # every rank: they must all take the NaN path
        if self.main:
            save_tensors(self.paths.checkpoint, tensors, meta)
        self.dist.barrier()  # a rank that reads it next (a NaN restart) finds it written

    # ----- data -----------------------------------------------------------------------------
    def _load_data(self) -> tuple[PairedImages, PairedImages]:
        """Every folder's train and test pairs, joined; ``groups`` says which folder each came from."""
        limit = self.plan.data.max_pixels
        trains: list[PairedImages] = []
        vals: list[PairedImages] = []
        problems: list[str] = []
        for root in self.data_roots:
            train_dir, test_dir = split_dirs(root)
            for folder, max_size, into in ((train_dir, None, trains), (test_dir, self.plan.data.val_max_size, vals)):
                try:  # every split is checked before any error is raised: one report for all
                    into.append(load_images(folder, max_size=max_size, progress=self.progress, max_pixels=limit))
                except DataError as exc:
                    problems.append(str(exc))
        for root in self.val_roots:
            try:
                vals.append(load_images(split_dirs(root)[1], self.plan.data.val_max_size, self.progress, limit))
            except DataError as exc:
                problems.append(str(exc))
        if problems:
            raise DataError("\n".join(problems))
        return PairedImages.join(trains).to(self.device), PairedImages.join(vals).to(self.device)

    def _inputs_before(self, pi: int, train: PairedImages, val: PairedImages) -> tuple[PairedImages, PairedImages]:
        """The input sets that phase ``pi`` starts from: the output of the last generate phase
        before it (cached in ``generated/``), or LR."""
        for prev in range(pi - 1, -1, -1):
            phase = self.plan.phases[prev]
            if phase.kind == "generate":
                tensors, _ = load_tensors(self.paths.generated(phase.name))
                # B023 (loop variable in a closure) is fine: pick runs on the next line, and the loop returns
                pick = lambda split, n: [tensors[f"{split}.{i}"].to(self.device) for i in range(n)]  # noqa: E731, B023
                return train.with_inputs(pick("train", len(train))), val.with_inputs(pick("val", len(val)))
        return train, val

    # ----- validation -----------------------------------------------------------------------
    @torch.no_grad()
    def _validate(
        self, forward: Callable[[torch.Tensor], torch.Tensor], val: PairedImages, precision: str = "fp32"
    ) -> dict[str, float]:
        """Scores of ``forward`` on the validation pairs, and how long it took (``val_seconds``).
        Crops of one size run in batches of at most ``data.val_batch_pixels`` pixels; in
        ``precision`` (the periodic validations run in the training precision, the phase-end
        score of the saved float32 model in float32). Metrics are computed in float32."""
        t0 = time.perf_counter()
        sums = dict(loss=0.0, psnr=0.0, psnr_y=0.0, ssim=0.0, ssim_y=0.0)
        if not self.main:  # only rank 0 reports validation
            return {k: float("nan") for k in sums} | {"val_seconds": 0.0}
        shave = self.plan.data.shave
        per_folder = [0.0] * len(self.folders)
        trained_on = len(self.data_roots)  # the overall scores are those of the training folders' pairs
        opts = dataclasses.replace(self.step_options, precision="bf16" if precision == "bf16" else "fp32")
        n = 0
        for idx in _batches(val.inputs, self.plan.data.val_batch_pixels):
            with opts.autocast():
                outs = forward(opts.layout(torch.stack([val.inputs[i] for i in idx]))).float().clamp(0, 1)
            for out, i in zip(outs, idx):
                out, y, g = out[None], val.targets[i][None], val.groups[i]
                score = psnr(out, y, shave)
                per_folder[g] += score
                if g >= trained_on:  # a validation-only folder (data.val_dirs): its own line only
                    continue
                n += 1
                sums["loss"] += float((out - y).abs().mean())
                sums["psnr"] += score
                sums["psnr_y"] += psnr(out, y, shave, y=True)
                sums["ssim"] += ssim(out, y, shave)
                sums["ssim_y"] += ssim(out, y, shave, y=True)
        scores = {k: v / n for k, v in sums.items()}
        if len(self.folders) > 1:  # each camera's test pairs on their own: psnr_data1, psnr_data2, ...
            counts = [val.groups.count(k) for k in range(len(self.folders))]
            for k, (total, n) in enumerate(zip(per_folder, counts)):
                scores[f"psnr_data{k + 1}"] = total / n if n else float("nan")
                log.info("  %s: %.3f dB on %d test pairs", self.folders[k], scores[f"psnr_data{k + 1}"], n)
        scores["val_seconds"] = time.perf_counter() - t0
        return scores

    # ----- phases ---------------------------------------------------------------------------
    def _init_phase(self, model: MCAN, pi: int, phase: PhaseConfig) -> None:
        if phase.init == "keep":
            return
        if phase.init.startswith("from:"):
            load_into(model, phase)
            log.info("phase %s: starts from %s", phase.name, phase.init.removeprefix("from:"))
            return
        with seeded(self.plan.train.seed * 1000 + pi) as gen:
            if phase.kind == "train_joint":
                for block in model.blocks:
                    init_block(block, cast(InitScheme, phase.init), gen)
            elif phase.init == "inherit":
                inherit_block(model.blocks[phase.block - 1], model.blocks[phase.block - 2])
            else:
                init_block(model.blocks[phase.block - 1], cast(InitScheme, phase.init), gen)
        log.info("phase %s: %s initialisation", phase.name, phase.init)

    def _train_phase(
        self,
        model: MCAN,
        pi: int,
        pos: Position,
        resume: dict[str, Any] | None,
        train: PairedImages,
        val: PairedImages,
        metrics: MetricsLog,
        lr_scale: float = 1.0,
    ) -> None:
        phase = self.plan.phases[pi]
        cfg = self.plan
        t_phase = time.perf_counter()
        if phase.kind == "train_block":
            module = model.blocks[phase.block - 1]
            forward_for = lambda clamp: lambda x: module(x, clamp=clamp)  # noqa: E731
            what = f"N{phase.block}"
        else:
            module = model
            forward_for = lambda clamp: lambda x: model(x, clamp=clamp)  # noqa: E731
            what = "N"
        if pos.stage == 0 and pos.iter == 0:
            self._init_phase(model, pi, phase)
        sampler = PatchSampler(
            train,
            cfg.data.patch_size,
            cfg.data.batch_size,
            cfg.data.augment,
            seed=cfg.train.seed * 1000 + pi,
            mix=cfg.data.mix or None,
        )
        sample = sampler.sample
        train_forward_for = forward_for
        no_sync = None
        if self.dist.enabled:  # DDP: each rank trains on its slice of the same global batch
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            train_forward_for = lambda clamp: lambda x: ddp(x, clamp=clamp)  # noqa: E731
            no_sync = ddp.no_sync

            def ddp_sample() -> tuple[torch.Tensor, torch.Tensor]:
                x, y = sampler.sample()
                return x.tensor_split(self.dist.world)[self.dist.rank], y.tensor_split(self.dist.world)[self.dist.rank]

            sample = ddp_sample

        def stage_callbacks(si: int, stage: StageConfig, optimizer: torch.optim.Optimizer) -> LoopCallbacks:
            """What run_stage reports to for stage ``si``: bound to that stage's values here, not to the
            variables of the loop below."""
            forward = forward_for(stage.clamp)  # validation: the module itself, on rank 0
            offset = self.stage_offsets[(pi, si)]
            base = dict(phase=phase.name, stage=stage.name, block=what)

            def on_log(it: int, loss: float, lr: float, sec: float, data_share: float) -> None:
                metrics.write(
                    kind="train",
                    **base,
                    iter=it,
                    step=offset + it,
                    loss=loss,
                    lr=lr,
                    sec_per_iter=sec,
                    data_share=data_share,
                    precision=self.step_options.precision,
                )

            def on_iter_end(it: int) -> None:
                if cfg.train.val_every and it % cfg.train.val_every == 0 and it < stage.total_iters:
                    module.eval()
                    metrics.write(
                        kind="val",
                        **base,
                        iter=it,
                        step=offset + it,
                        lr=stage.lr_at(it - 1) * lr_scale,
                        **self._validate(forward, val, self.step_options.precision),
                    )
                    module.train()
                if cfg.train.checkpoint_every and it % cfg.train.checkpoint_every == 0 and it < stage.total_iters:
                    self._save_checkpoint(model, Position(pi, si, it), metrics, optimizer, sampler, lr_scale)

            return LoopCallbacks(on_log, on_iter_end, self.should_stop, self.dist.mean)

        for si in range(pos.stage, len(phase.stages)):
            stage = phase.stages[si]
            start = pos.iter if si == pos.stage else 0
            opts = self.step_options
            optimizer = make_optimizer(module.parameters(), stage, opts.optimizer_impl, capturable=opts.cuda_graphs)
            if resume is not None:  # resuming inside this phase: continue the same draws
                if "rng.sampler" in resume["tensors"]:
                    sampler.set_state(resume["tensors"]["rng.sampler"])
                if start > 0:
                    optimizer_from_flat(optimizer, resume["tensors"], resume["meta"]["optim"])
            resume = None
            callbacks = stage_callbacks(si, stage, optimizer)
            module.train()
            t0 = time.perf_counter()
            reached = run_stage(
                train_forward_for(stage.clamp),
                optimizer,
                sample,
                stage,
                start,
                cfg.train.log_every,
                callbacks,
                progress=f"{phase.name} {stage.name}" if self.progress else None,
                lr_scale=lr_scale,
                micro_batches=cfg.data.micro_batches,
                no_sync=no_sync,
                options=self.step_options,
            )
            if reached < stage.total_iters:
                self._save_checkpoint(model, Position(pi, si, reached), metrics, optimizer, sampler, lr_scale)
                raise TrainingInterrupted(
                    f"stopped at phase {phase.name}, stage {stage.name}, iteration {reached}; "
                    f"checkpoint written to {self.paths.checkpoint}; run the same command to resume"
                )
            log.info(
                "phase %s stage %s: %d iterations in %.1f s",
                phase.name,
                stage.name,
                stage.total_iters - start,
                time.perf_counter() - t0,
            )
            self._save_checkpoint(model, Position(pi, si + 1, 0), metrics, sampler=sampler, lr_scale=lr_scale)
        module.eval()
        final_clamp = phase.stages[-1].clamp
        scores = self._validate(forward_for(final_clamp), val)  # the saved float32 model's score
        if phase.kind == "train_block" and self.main:
            save_block(self.paths.block(phase.block), module, cfg.model, phase.block)
        metrics.write(
            kind="phase",
            phase=phase.name,
            stage=phase.stages[-1].name,
            block=what,
            iter=phase.stages[-1].total_iters,
            step=self.stage_offsets[(pi, len(phase.stages))],
            lr=phase.stages[-1].lr[-1],
            seconds=time.perf_counter() - t_phase,
            **scores,
        )
        log.info(
            "phase %s (%s): validation PSNR %.3f dB (Y %.3f dB)", phase.name, what, scores["psnr"], scores["psnr_y"]
        )

    @torch.no_grad()
    def _generate(
        self, model: MCAN, pi: int, train: PairedImages, val: PairedImages, metrics: MetricsLog
    ) -> tuple[PairedImages, PairedImages]:
        """Phase i-2: replace the input sets by N_i+(input), and cache them for resuming."""
        from tqdm.auto import tqdm

        phase = self.plan.phases[pi]
        block = model.blocks[phase.block - 1].eval()
        d = self.dist
        t_phase = time.perf_counter()

        def run(xs: list[torch.Tensor], split: str) -> list[torch.Tensor]:
            # image i is made by rank i % world, then broadcast from it to every rank
            out = [
                block(x[None], clamp=True)[0] if i % d.world == d.rank else torch.empty_like(x)
                for i, x in enumerate(
                    tqdm(xs, desc=f"{phase.name} {split}", unit="img", leave=False, disable=not self.progress)
                )
            ]
            return [d.broadcast_(t, i % d.world) for i, t in enumerate(out)]

        new_train, new_val = train.with_inputs(run(train.inputs, "train")), val.with_inputs(run(val.inputs, "val"))
        tensors = {f"train.{i}": t for i, t in enumerate(new_train.inputs)}
        tensors.update({f"val.{i}": t for i, t in enumerate(new_val.inputs)})
        check_finite(tensors, self.paths.generated(phase.name))
        if self.main:
            save_tensors(self.paths.generated(phase.name), tensors, {"phase": phase.name})
        seconds = time.perf_counter() - t_phase  # the generation itself, without its validation
        scores = self._validate(lambda x: x, new_val)
        metrics.write(
            kind="phase",
            phase=phase.name,
            stage="generate",
            block=f"N{phase.block}",
            iter=0,
            step=self.stage_offsets[(pi, 0)],
            lr=0.0,
            seconds=seconds,
            **scores,
        )
        log.info(
            "phase %s: generated LR_%d from N%d+ (validation PSNR %.3f dB)",
            phase.name,
            phase.block,
            phase.block,
            scores["psnr"],
        )
        return new_train, new_val

    # ----- the run --------------------------------------------------------------------------
    def run(self) -> RunResult:
        from .report import write_report

        for root in self.folders:
            split_dirs(root)  # a wrong --data or val_dirs fails before the run directory is made
        try:
            self._prepare_dir()
        except OSError as exc:
            raise CheckpointError(
                f"{self.paths.root}: cannot use as the run directory "
                f"({exc.strerror or exc}); pass a writable folder to --out"
            ) from None
        with seeded(self.plan.train.seed):
            model = build_model(self.plan.model)
        torch.manual_seed(rank_seed(self.plan.train.seed, self.dist.rank))
        pos, resume, keep_lines = self._load_position(model)
        metrics = MetricsLog(self.paths.metrics, keep_lines, enabled=self.main)
        n_phases = len(self.plan.phases)
        if pos.phase >= n_phases and self.paths.model.exists():
            if self.main and not self.paths.report.exists():
                write_report(self.paths, self.plan, model.to(self.device), None)
            log.info("run %s already finished; nothing to do", self.paths.root)
            return self._result(metrics, already_finished=True)
        model.to(self.device)
        if self.step_options.channels_last:  # values unchanged; files are written contiguous
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        train_raw, val_raw = self._load_data()
        # ranks that read different checkpoints or data would call collectives out of step
        self.dist.check_same("the checkpoint position", (pos, keep_lines))
        self.dist.check_same(
            "the training data", [(n, tuple(t.shape)) for d in (train_raw, val_raw) for n, t in zip(d.names, d.targets)]
        )
        if not metrics.count:
            metrics.write(
                kind="identity", phase="LR", stage="", iter=0, step=0, lr=0.0, **self._validate(lambda x: x, val_raw)
            )
        if resume is None and pos == Position():  # a first checkpoint: what a NaN in phase 1 restores
            self._save_checkpoint(model, pos, metrics)
        train, val = self._inputs_before(pos.phase, train_raw, val_raw)
        t_run = time.perf_counter()
        for pi in range(pos.phase, n_phases):
            phase = self.plan.phases[pi]
            log.info(
                "phase %s: %s%s", phase.name, phase.kind, f" N{phase.block}" if phase.kind != "train_joint" else " N"
            )
            if phase.kind == "generate":
                train, val = self._generate(model, pi, train, val, metrics)
            else:
                src_train, src_val = (train_raw, val_raw) if phase.kind == "train_joint" else (train, val)
                lr_scale = resume["meta"].get("lr_scale", 1.0) if resume else 1.0
                for attempt in range(self.plan.train.nonfinite_retries + 1):
                    try:
                        self._train_phase(model, pi, pos, resume, src_train, src_val, metrics, lr_scale)
                        break
                    except NonFiniteError as exc:
                        pos, resume, metrics, lr_scale = self._recover(model, pi, exc, attempt, lr_scale)
            resume, pos = None, Position(pi + 1)
            self._save_checkpoint(model, pos, metrics)
        model.eval()
        if self.main:
            save_model(self.paths.model, model, plan=[p.name for p in self.plan.phases])
            write_report(self.paths, self.plan, model, val_raw)
        self.dist.barrier()
        log.info("run finished in %.1f s: %s", time.perf_counter() - t_run, self.paths.root)
        return self._result(metrics, already_finished=False)

    def _recover(
        self, model: MCAN, pi: int, exc: NonFiniteError, attempt: int, lr_scale: float
    ) -> tuple[Position, dict[str, Any] | None, MetricsLog, float]:
        """After a NaN/inf: stop with the reason, or restore the last good checkpoint and go on
        with lower learning rates (train.on_nonfinite)."""
        tc, phase = self.plan.train, self.plan.phases[pi]
        if tc.on_nonfinite == "stop" or attempt >= tc.nonfinite_retries:
            why = (
                "train.on_nonfinite = 'stop'"
                if tc.on_nonfinite == "stop"
                else f"{tc.nonfinite_retries} retries with lower learning rates did not help"
            )
            raise TrainingDiverged(
                f"phase {phase.name}: {exc}; stopped ({why}). The last good checkpoint "
                f"{self.paths.checkpoint} is kept: lower this phase's learning rates in the plan"
                + (" or set train.on_nonfinite = 'retry'" if tc.on_nonfinite == "stop" else "")
                + ", then run the same command to resume from it"
            ) from None
        if self.paths.checkpoint.exists():
            pos, resume, keep = self._load_position(model)
        else:  # diverged before the first checkpoint: start the run's model afresh
            with seeded(self.plan.train.seed):
                model.load_state_dict(build_model(self.plan.model).state_dict())
            pos, resume, keep = Position(), None, 0
        if pos.phase != pi:
            raise TrainingDiverged(f"phase {phase.name}: {exc}; the last checkpoint is from another phase")
        metrics = MetricsLog(self.paths.metrics, keep, enabled=self.main)
        lr_scale *= tc.nonfinite_lr_factor
        with self.paths.events.open("a") if self.main else contextlib.nullcontext(_Discard()) as f:
            f.write(
                json.dumps(
                    {
                        "event": "nonfinite",
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "phase": phase.name,
                        "detail": str(exc),
                        "restart": dataclasses.asdict(pos),
                        "lr_scale": lr_scale,
                    }
                )
                + "\n"
            )
        log.warning(
            "phase %s: %s; restarting from the last good checkpoint (stage %d, iteration %d) "
            "with learning rates x%g (retry %d of %d)",
            phase.name,
            exc,
            pos.stage,
            pos.iter,
            lr_scale,
            attempt + 1,
            tc.nonfinite_retries,
        )
        return pos, resume, metrics, lr_scale

    def _result(self, metrics: MetricsLog, already_finished: bool) -> RunResult:
        records = metrics.records()
        identity = next((r for r in records if r["kind"] == "identity"), {})
        return RunResult(self.paths, already_finished, [r for r in records if r["kind"] == "phase"], identity)


def train(
    plan: Plan,
    data_root: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    dist: Dist | None = None,
) -> RunResult:
    """Run ``plan`` on the pairs under ``data_root`` (``train/`` and ``test/``; several folders are
    trained on together, mixed by ``data.mix``) into ``out_dir``,
    resuming from its checkpoint if the folder holds an unfinished run of the same plan."""
    return PhaseRunner(plan, data_root, out_dir, device, progress, should_stop, dist).run()
