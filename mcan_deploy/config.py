"""Typed configuration: the model, the data, and the phase plan that drives training.

A phase plan is data (TOML), the trainer is code: a user changes iterations, learning rates, the
number of blocks or the loss of one phase by editing TOML. Loading is strict: an unknown key, a
wrong type or an impossible value is a ``ConfigError`` that names the key and the file.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

ModelKind = Literal["mcan", "toy"]
RcabImpl = Literal["torch", "triton"]
PhaseKind = Literal["train_block", "generate", "train_joint"]
InitScheme = Literal["keep", "orthogonal", "inherit", "normal", "default"]
OptimizerName = Literal["adam", "adadelta"]
LossName = Literal["l1", "l2", "gradient"]
Precision = Literal["auto", "fp32", "bf16"]
OptimizerImpl = Literal["auto", "for_loop", "foreach", "fused"]
CudaGraphs = Literal["auto", True, False]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network N = N_m(...N_2(N_1(x))). Defaults are the report's MCAN."""

    kind: ModelKind = "mcan"  # "mcan": RCAB blocks (report sec. 3.2); "toy": six 3x3 convs (sec. 3.1)
    n_blocks: int = 3  # m, the number of blocks N_i chained into N
    n_resblocks: int = 16  # residual channel-attention blocks (RCAB) per N_i
    n_feats: int = 64  # feature channels inside a block
    reduction: int = 4  # channel-attention squeeze: n_feats -> n_feats // reduction (64 -> 16)
    n_colors: int = 3  # image channels in and out
    clamp: bool = True  # N_i+: clamp each block's output to [0, 1] (inference default)
    # how each RCAB's channel-attention tail runs: eager torch, or the fused Triton kernels
    # (mcan_deploy.kernels.rcab; where they cannot run, torch runs and the log says so once).
    # An execution choice, not part of the weights: model files do not record it.
    rcab_impl: RcabImpl = "torch"

    def __post_init__(self) -> None:
        for name, tp in (("kind", ModelKind), ("rcab_impl", RcabImpl)):
            if getattr(self, name) not in typing.get_args(tp):
                raise ConfigError(f"model.{name} = {getattr(self, name)!r} is not one of {list(typing.get_args(tp))}")
        for name in ("n_blocks", "n_resblocks", "n_feats", "reduction", "n_colors"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} = {getattr(self, name)} must be >= 1")
        if self.n_feats % self.reduction:
            raise ConfigError(
                f"model.n_feats = {self.n_feats} is not divisible by model.reduction = "
                f"{self.reduction}; pick a reduction that divides it (the report uses 64 / 4 = 16)"
            )


@dataclass(frozen=True)
class StageConfig:
    """One optimiser run inside a phase, e.g. Adadelta on N_i, then Adam on N_i+.

    ``iters`` and ``lr`` are equal-length lists: the learning rate steps down after each entry
    while the optimiser keeps its state (the report's "decay to 1e-5").
    """

    name: str
    optimizer: OptimizerName = "adam"
    iters: list[int] = field(default_factory=lambda: [1000])
    lr: list[float] = field(default_factory=lambda: [1e-4])
    clamp: bool = True  # train N_i+ (True) or the unclamped N_i (False)
    loss: LossName = "l1"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam
    eps: float = 1e-8  # Adam / Adadelta epsilon
    rho: float = 0.9  # Adadelta
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if len(self.iters) != len(self.lr) or not self.iters:
            raise ConfigError(
                f"stage '{self.name}': iters {self.iters} and lr {self.lr} must be non-empty "
                "lists of the same length (one learning rate per span of iterations)"
            )
        if any(n < 0 for n in self.iters) or any(r <= 0 for r in self.lr):
            raise ConfigError(f"stage '{self.name}': iters must be >= 0 and lr > 0")
        if len(self.betas) != 2:
            raise ConfigError(f"stage '{self.name}': betas = {self.betas} needs two values")

    @property
    def total_iters(self) -> int:
        return sum(self.iters)

    def lr_at(self, it: int) -> float:
        """Learning rate for iteration ``it`` (0-based) of this stage."""
        end = 0
        for n, rate in zip(self.iters, self.lr):
            end += n
            if it < end:
                return rate
        return self.lr[-1]


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of the plan.

    ``train_block`` trains block ``block`` on the current input set (LR, or LR_{i-1} after a
    ``generate`` phase); ``generate`` replaces the current input set by N_block+(input), e.g.
    phase 1-2 makes LR_1; ``train_joint`` trains all of N on the raw LR (phase 4, or the
    single back-propagation baseline).
    """

    name: str
    kind: PhaseKind
    block: int = 0  # 1-based block index for train_block / generate
    # how the trained block(s) start: an InitScheme, or "from:PATH" (a trained model, block or
    # checkpoint file); "from:" alone takes the file given with mcan-train --init-from
    init: str = "keep"
    stages: list[StageConfig] = field(default_factory=list)

    @property
    def total_iters(self) -> int:
        return sum(s.total_iters for s in self.stages)


@dataclass(frozen=True)
class DataConfig:
    """Sampling of training patches and the validation protocol."""

    patch_size: int = 48  # LR (= HR) patch side in pixels
    batch_size: int = 16
    # split each batch into this many chunks with accumulated gradients: less memory per step;
    # with k = 2, 4, ... it reproduces bitwise a run of k processes under torchrun
    micro_batches: int = 1
    augment: bool = True  # random 0/90/180/270 rotation and horizontal flip
    val_max_size: int = 1500  # validation images are centre-cropped to at most this side
    # validation crops of one size run in batches of at most this many pixels (a larger one alone)
    val_batch_pixels: int = 1_048_576
    shave: int = 0  # border pixels ignored by PSNR / SSIM
    max_pixels: int = 200_000_000  # image files declaring more pixels are refused before decoding
    # several cameras in one run: dataset folders (each with train/ and test/; --data overrides),
    # and each one's share of every batch's patches (default equal, whatever each folder's size)
    dirs: list[str] = field(default_factory=list)
    mix: list[float] = field(default_factory=list)
    # folders validated on but not trained on (their test/ pairs): how a model does on another camera
    val_dirs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("patch_size", "batch_size", "val_max_size", "max_pixels", "micro_batches", "val_batch_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} = {getattr(self, name)} must be >= 1")
        if self.mix and (any(m < 0 for m in self.mix) or sum(self.mix) <= 0):
            raise ConfigError(f"data.mix = {self.mix}: give one weight >= 0 per data folder, not all 0")
        if self.batch_size % self.micro_batches:
            raise ConfigError(
                f"data.batch_size = {self.batch_size} does not split into data.micro_batches = "
                f"{self.micro_batches} equal chunks"
            )
        if self.shave < 0:
            raise ConfigError(f"data.shave = {self.shave} must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Run-level settings: seeds and how often to log, validate and checkpoint."""

    seed: int = 0
    log_every: int = 50  # iterations per metrics.jsonl loss line
    val_every: int = 500  # iterations between validations (and one at every phase end)
    checkpoint_every: int = 500  # iterations between resumable checkpoints
    strip_size: int = 192  # side of the test crop shown in the report's image strip
    # a NaN/inf loss (or weights): "retry" restores the last good checkpoint and continues with
    # the phase's learning rates x nonfinite_lr_factor, at most nonfinite_retries times per
    # phase; "stop" keeps that checkpoint and stops with the reason
    on_nonfinite: Literal["retry", "stop"] = "retry"
    nonfinite_retries: int = 3
    nonfinite_lr_factor: float = 0.1
    # how each step is computed, not what: a run resumes across a change of any of these.
    # "auto": bf16 autocast where the device computes bf16 natively (AVX-512 BF16 / AMX CPUs,
    # CUDA compute capability >= 8), float32 elsewhere; weights, optimiser state, loss, clamp
    # and metrics stay float32 (docs/training.md, "Training speed", for the measurements)
    precision: Precision = "auto"
    channels_last: bool = True  # NHWC activations and weights while training (faster on CPU and GPU)
    # PyTorch's optimiser implementation: "auto" is fused Adam and foreach Adadelta
    optimizer_impl: OptimizerImpl = "auto"
    # capture each stage's whole step (forward, backward, optimiser) once and replay it: 2.6-2.8x
    # faster steps on an H200. "auto": on wherever the step qualifies (a CUDA device, one pass per
    # step, no torchrun, a device-side optimiser), off elsewhere with the reason in the log and
    # report.md; true refuses to run where it cannot, false never captures
    cuda_graphs: CudaGraphs = "auto"

    def __post_init__(self) -> None:
        for name, tp in (
            ("on_nonfinite", Literal["retry", "stop"]),
            ("precision", Precision),
            ("optimizer_impl", OptimizerImpl),
        ):
            if getattr(self, name) not in typing.get_args(tp):
                raise ConfigError(f"train.{name} = {getattr(self, name)!r} is not one of {list(typing.get_args(tp))}")
        if not (self.cuda_graphs is True or self.cuda_graphs is False or self.cuda_graphs == "auto"):
            raise ConfigError(f"train.cuda_graphs = {self.cuda_graphs!r} is not one of true, false, 'auto'")
        if self.nonfinite_retries < 0 or not 0 < self.nonfinite_lr_factor < 1:
            raise ConfigError(
                f"train.nonfinite_retries = {self.nonfinite_retries} must be >= 0 and "
                f"train.nonfinite_lr_factor = {self.nonfinite_lr_factor} in (0, 1)"
            )
        if self.log_every < 1 or self.strip_size < 1:
            raise ConfigError(
                f"train.log_every = {self.log_every} and train.strip_size = {self.strip_size} must be >= 1"
            )
        if self.val_every < 0 or self.checkpoint_every < 0:
            raise ConfigError("train.val_every and train.checkpoint_every must be >= 0 (0: only at phase ends)")


@dataclass(frozen=True)
class Plan:
    """A complete phase plan: what to build and how to train it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    phases: list[PhaseConfig] = field(default_factory=list)
    description: str = ""

    def validate(self, source: str = "<plan>") -> Plan:
        """Check cross-field rules; returns self so it chains after loading."""
        if not self.phases:
            raise ConfigError(f"{source}: the plan has no [[phases]]; add at least one")
        names = [p.name for p in self.phases]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{source}: phase names must be unique, repeated: {dupes}")
        m = self.model.n_blocks
        for p in self.phases:
            where = f"{source}: phase '{p.name}'"
            if p.kind in ("train_block", "generate") and not 1 <= p.block <= m:
                raise ConfigError(f"{where}: block = {p.block} must be in 1..{m} (model.n_blocks)")
            if p.kind != "generate" and not p.stages:
                raise ConfigError(f"{where}: a {p.kind} phase needs at least one [[phases.stages]]")
            if p.kind == "generate" and (p.stages or p.init != "keep"):
                raise ConfigError(f"{where}: a generate phase takes no stages and no init")
            if p.init not in typing.get_args(InitScheme) and not p.init.startswith("from:"):
                raise ConfigError(
                    f"{where}: init = {p.init!r} is not one of {list(typing.get_args(InitScheme))} or 'from:PATH'"
                )
            if p.init == "inherit" and (p.kind != "train_block" or p.block < 2):
                raise ConfigError(f"{where}: init = 'inherit' copies N_(i-1); it needs block >= 2")
            for s in p.stages:
                if self.train.optimizer_impl == "fused" and s.optimizer != "adam":
                    raise ConfigError(
                        f"{where} stage '{s.name}': train.optimizer_impl = 'fused', but PyTorch has no "
                        f"fused {s.optimizer}; use 'auto' (fused Adam, foreach Adadelta) or 'foreach'"
                    )
            snames = [s.name for s in p.stages]
            if len(set(snames)) != len(snames):
                raise ConfigError(f"{where}: stage names must be unique, got {snames}")
        return self


def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    """Validate (and lightly coerce) one TOML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{source}: {key} = {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value]  # a scalar where a list is expected means a one-element list
        return [_check_type(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{source}: {key}: union types are not supported in plans")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a table, got {type(value).__name__}")
        return _from_dict(tp, value, key, source)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{source}: {key} = {value!r} should be of type {tp.__name__}, got {type(value).__name__}")
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{key}' in [{where}]; known keys: {sorted(known)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k, source) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{source}: [{where}] {exc}") from None


def plan_from_dict(data: dict[str, Any], source: str = "<plan>") -> Plan:
    """Build and validate a ``Plan`` from parsed TOML."""
    plan = _from_dict(Plan, data, "", source)
    return plan.validate(source)


def load_plan(path: str | Path) -> Plan:
    """Read a TOML phase plan; every error names ``path``. A plan may start from another:
    ``base = "other.toml"`` (relative to the file) takes that plan, and this file's tables
    change it key by key (``[train] precision = "bf16"`` changes one key; a list such as
    ``[[phases]]`` replaces the base's whole list)."""
    path = Path(path)
    chain: list[Path] = []
    data = _plan_data(path, (), chain)
    source = str(path) + (f" (with its base {', '.join(map(str, chain))})" if chain else "")
    return plan_from_dict(data, source)


def _plan_data(path: Path, seen: tuple[Path, ...], chain: list[Path]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the plan ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base = {base!r} should be the path of another plan file")
    base_path = (path.parent / base).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(f"{path}: base = {base!r} leads back to itself; give a plan that does not extend this one")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base = {base!r}: no such file ({base_path})")
    chain.append(base_path)
    return _merged(_plan_data(base_path, (*seen, path.resolve()), chain), data)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s keys: tables merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain data, ready for ``tomli_w`` (the resolved ``plan.toml`` of a run)."""
    return dataclasses.asdict(plan)


def dump_plan(plan: Plan) -> str:
    """Serialise a plan to TOML text that ``load_plan`` reads back to an equal plan."""
    import tomli_w

    return tomli_w.dumps(plan_to_dict(plan))


def cap_iterations(plan: Plan, max_iters: int, max_batch: int | None = None) -> Plan:
    """The plan with every span of iterations cut to at most ``max_iters``: a smoke run (the
    study's ``--max-iters`` and ``mcan-train --max-iters``). With ``max_batch`` the batch is cut
    to a divisor of both it and the plan's batch (and the micro-batches to one of the new
    batch): a smoke run checks that a plan runs, not what it learns."""
    phases = [
        dataclasses.replace(
            p, stages=[dataclasses.replace(s, iters=[min(n, max_iters) for n in s.iters]) for s in p.stages]
        )
        for p in plan.phases
    ]
    data = plan.data
    if max_batch is not None and data.batch_size > max_batch:
        import math

        batch = math.gcd(data.batch_size, max_batch)
        data = dataclasses.replace(data, batch_size=batch, micro_batches=math.gcd(data.micro_batches, batch))
    return dataclasses.replace(plan, phases=phases, data=data)


def with_init_from(plan: Plan, path: str) -> Plan:
    """``mcan-train --init-from PATH``: the phases that say ``init = "from:"`` start from ``path``;
    in a plan without one, the first training phase does (the common case: fine-tune a trained
    model)."""
    phases = list(plan.phases)
    slots = [i for i, p in enumerate(phases) if p.init == "from:"]
    if not slots:
        slots = [next(i for i, p in enumerate(phases) if p.kind != "generate")]
    for i in slots:
        phases[i] = dataclasses.replace(phases[i], init=f"from:{path}")
    return dataclasses.replace(plan, phases=phases)
