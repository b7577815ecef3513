"""One training step (forward, loss, backward, optimiser update) in the plan's speed options.

Every stage has the same shapes at every step, the case that bf16 autocast, channels_last,
fused or foreach optimisers and CUDA graphs are built for (issue 18). The options change how a
step is computed, never what it computes: float32 master weights and optimiser state; the loss,
the clamp of N_i+ and every metric in float32; checkpoints in float32 whatever the precision,
so a run resumes across a change of any option.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..config import OptimizerImpl, StageConfig, TrainConfig
from ..errors import ConfigError
from ..hardware import native_bf16

log = logging.getLogger(__name__)

Resolved = Literal["fp32", "bf16"]


def resolve_precision(precision: str, device: torch.device) -> tuple[Resolved, str]:
    """``auto`` is bf16 where the device computes it natively (measured 2-3x faster steps on
    AVX-512 BF16 / AMX CPUs; the same lever as on A100/H100 class GPUs), fp32 elsewhere, where
    bf16 is emulated and slower. Returns the precision and why."""
    if precision == "fp32":
        return "fp32", "train.precision"
    ok, why = native_bf16(device)
    if precision == "bf16":
        if not ok:
            log.warning("train.precision = 'bf16' on %s: %s; bf16 is emulated and may be slower", device, why)
        return "bf16", "train.precision"
    return ("bf16" if ok else "fp32"), f"train.precision = 'auto': {why}"


@dataclass(frozen=True)
class StepOptions:
    """How every training step of a run is computed (``[train]``'s speed options, resolved for
    one device)."""

    precision: Resolved = "fp32"
    channels_last: bool = False
    optimizer_impl: OptimizerImpl = "for_loop"
    cuda_graphs: bool = False
    device_type: str = "cpu"
    graphs_why: str = ""  # why CUDA graphs are on or off (train.cuda_graphs, resolved)

    @classmethod
    def for_run(
        cls, train: TrainConfig, device: torch.device, micro_batches: int = 1, distributed: bool = False
    ) -> tuple[StepOptions, str]:
        """The plan's options on ``device``; refuses combinations that cannot run, each with one
        line naming the key and the fix. Returns the options and why the precision is what it is."""
        graphs, graphs_why = resolve_cuda_graphs(train, device, micro_batches, distributed)
        precision, why = resolve_precision(train.precision, device)
        return cls(precision, train.channels_last, train.optimizer_impl, graphs, device.type, graphs_why), why

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast of the forward pass (the loss is computed in float32 after it)."""
        if self.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16, cache_enabled=not self.cuda_graphs)
        return contextlib.nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def describe(self) -> str:
        return (
            f"{self.precision}, {'channels_last' if self.channels_last else 'NCHW'}, "
            f"{self.optimizer_impl} optimiser{', CUDA graphs' if self.cuda_graphs else ''}"
        )


def resolve_cuda_graphs(
    train: TrainConfig, device: torch.device, micro_batches: int = 1, distributed: bool = False
) -> tuple[bool, str]:
    """Whether each step is captured in a CUDA graph, and why. A step qualifies where it is one
    fixed sequence of device work: on a CUDA device, in one pass (no micro-batches), without
    DDP's gradient exchange, with an optimiser that reads its learning rate on the device.
    ``true`` refuses what does not qualify (one line naming the key and the fix); ``auto``
    turns it off and says why."""
    if train.cuda_graphs is False:
        return False, "train.cuda_graphs = false"
    if device.type != "cuda":
        why = f"needs a CUDA device, not {device}"
        fix = "set it to false (or drop --cuda-graphs) on this machine"
    elif micro_batches > 1 or distributed:
        what = "torchrun (DistributedDataParallel)" if distributed else f"data.micro_batches = {micro_batches}"
        why = f"captures one whole step: not with {what}"
        fix = "set one of them off"
    elif train.optimizer_impl == "for_loop":  # for-loop Adadelta reads its rate with .item()
        why = "needs an optimiser that reads its learning rate on the device"
        fix = "set train.optimizer_impl to 'auto' (fused Adam, foreach Adadelta), not 'for_loop'"
    elif train.cuda_graphs is True:
        return True, "train.cuda_graphs = true"
    else:
        return True, "train.cuda_graphs = 'auto': on (a CUDA device, one pass per step, a device-side optimiser)"
    if train.cuda_graphs is True:
        raise ConfigError(f"train.cuda_graphs = true {why}: {fix}")
    return False, f"train.cuda_graphs = 'auto': off, it {why}"


def optimizer_kwargs(name: str, impl: OptimizerImpl, capturable: bool = False) -> dict[str, Any]:
    """PyTorch's implementation flags for ``impl``: ``auto`` is fused Adam and foreach Adadelta
    (Adadelta has no fused form)."""
    if impl == "auto":
        impl = "fused" if name == "adam" else "foreach"
    if impl == "fused" and name != "adam":
        raise ConfigError(
            f"train.optimizer_impl = 'fused': PyTorch has no fused {name}; use 'auto' (fused Adam, "
            "foreach Adadelta) or 'foreach'"
        )
    kwargs: dict[str, Any] = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    if capturable:
        kwargs["capturable"] = True
    return kwargs


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    stage: StageConfig,
    impl: OptimizerImpl = "for_loop",
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """The stage's optimiser at its first learning rate (report sec. 4.3 settings by default)."""
    params = list(params)
    kw = optimizer_kwargs(stage.optimizer, impl, capturable)
    if impl == "auto" and kw.get("fused"):
        try:  # fused Adam exists on CUDA, and on CPU from torch 2.4; elsewhere foreach
            return _adam(params, stage, kw)
        except (RuntimeError, TypeError, ValueError) as exc:
            log.info("fused Adam is not available here (%s); using foreach", str(exc).splitlines()[0][:120])
            kw = {**{k: v for k, v in kw.items() if k != "fused"}, "foreach": True}
    if stage.optimizer == "adadelta":
        return torch.optim.Adadelta(
            params, lr=stage.lr[0], rho=stage.rho, eps=stage.eps, weight_decay=stage.weight_decay, **kw
        )
    return _adam(params, stage, kw)


def _adam(params: list[torch.nn.Parameter], stage: StageConfig, kw: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        params,
        lr=stage.lr[0],
        betas=(stage.betas[0], stage.betas[1]),
        eps=stage.eps,
        weight_decay=stage.weight_decay,
        **kw,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate, in place where it is a tensor (a captured graph reads it)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class TrainStep:
    """``step(x, y)``: one optimiser step on the batch, returning the (detached, float32) loss.

    ``micro_batches`` splits the batch into equal chunks whose gradients add up (``no_sync``:
    DDP's, so ranks exchange gradients once). With ``options.cuda_graphs`` the whole step is
    captured on the first call and replayed after; the sampler and learning-rate changes stay
    outside the graph (inputs are copied into the graph's static tensors, the rate into a
    device tensor)."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        options: StepOptions | None = None,
        micro_batches: int = 1,
        no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.forward = forward
        self.optimizer = optimizer
        self.criterion = criterion
        self.options = options or StepOptions()
        self.micro_batches = micro_batches
        self.no_sync = no_sync
        self._graph: Any = None

    def eager(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opts = self.options
        self.optimizer.zero_grad(set_to_none=True)
        x, y = opts.layout(x), opts.layout(y)
        chunks = list(zip(x.tensor_split(self.micro_batches), y.tensor_split(self.micro_batches)))
        loss = torch.zeros((), device=x.device)
        for j, (xc, yc) in enumerate(chunks):
            last = j == len(chunks) - 1
            sync = self.no_sync() if self.no_sync is not None and not last else contextlib.nullcontext()
            with sync:
                with opts.autocast():
                    out = self.forward(xc)
                part = self.criterion(out.float(), yc) / len(chunks)  # the loss in float32
                part.backward()
            loss = loss + part.detach()
        self.optimizer.step()
        return loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.options.cuda_graphs:
            return self.eager(x, y)
        if self._graph is None:
            self._capture(x, y)
        graph, static_x, static_y, static_loss = self._graph
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return static_loss.clone()

    # ----- CUDA graphs -------------------------------------------------------------------
    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Warm up on a side stream (as PyTorch's whole-network capture recipe asks), capture one
        step, then put the weights and optimiser state back as they were before the warm-up, so
        the captured run trains exactly the steps an uncaptured one does."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for group in self.optimizer.param_groups:
            if not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(float(group["lr"]), device=x.device)
        saved_params = [p.detach().clone() for p in params]
        had_state = {
            id(p): {k: v.clone() for k, v in self.optimizer.state[p].items()} for p in params if self.optimizer.state[p]
        }
        static_x, static_y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.eager(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss = self.eager(static_x, static_y)
        with torch.no_grad():
            for p, saved in zip(params, saved_params):
                p.copy_(saved)
            for p in params:
                before = had_state.get(id(p))
                for k, v in self.optimizer.state[p].items():
                    if torch.is_tensor(v):
                        v.copy_(before[k]) if before is not None else v.zero_()
        self._graph = (graph, static_x, static_y, static_loss)
        log.info("CUDA graph captured: one whole step of %d parameters, replayed from now on", len(params))
