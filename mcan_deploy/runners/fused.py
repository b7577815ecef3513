"""An MCAN block for inference with every convolution fused with its epilogue (the GPU default).

Per RCAB the work is two 3x3 convolutions; a fused design adds the fewest passes over the
64-channel map around them:

- ``triton``: ``kernels.conv3x3`` for every convolution (head, RCAB pairs, body, tail), and no
  pass of its own: conv1's bias, ReLU and channel sums in its epilogue; from those sums and
  conv1's outer rows and columns the gate (``runners.conv_sums``: a convolution's sums follow
  from its input's), which conv2 applies with its bias and the residual in its epilogue; the
  body's long skip, the tail's "+ input" and clamp in theirs;
- ``cudnn``: cuDNN's convolution without its bias (faster so), then one epilogue pass for bias,
  ReLU and residual (``kernels.epilogue``); conv2's bias is folded into the channel sums and the
  gate-and-residual pass, so its sums cost one read-only pass;
- ``cudnn-fused``: as ``cudnn``, with conv1 through cuDNN's own fused convolution-bias-ReLU
  (``aten.cudnn_convolution_relu``, forward only), where it exists.

``auto`` times the candidates on the device against each other on one RCAB of the first map it
meets (``choose``), keeps those that agree with cuDNN's result and takes the fastest; the log
says what each took. Then the head (3 -> 64 channels, where cuDNN pads the input to 8 channels
and adds the bias in a pass of its own) is timed on its own, whichever won the RCAB: cuDNN with
the epilogue pass against the Triton convolution, which takes its nine taps as one K = 27
product with the bias in its epilogue (``head``; float16 on Triton keeps its head there, as
cuDNN's would need bounds that path does not compute).

float16 is guarded without a pass of its own: the Triton kernels set an overflow flag
(``flag``) in their epilogue; on cuDNN, whose float16 overflow can be a finite wrong value
(``CUDNN_FLOAT16_NOTE``), each convolution's output is bounded from its input's channel
magnitudes (read in the channel-sums pass) and the flag is set where a bound reaches float16's
range; the layer steps run float16 on Triton. Exact global statistics over parts of
full-size maps run through ``block_on_maps`` (``runners.fused_maps``: Triton output regions or
cuDNN row bands), no window gathers, the same passes as the whole image.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

from ..errors import MCANError
from ..model import MCAN, MCANBlock
from .conv_choice import ChoiceCache, agree, candidate_name, choice_key, time_ms
from .conv_sums import conv3x3_sums
from .fused_maps import Core, block_on_bands, block_on_regions
from .fused_weights import BlockWeights, ConvWeights, RCABWeights, block_weights
from .map_passes import channel_sums_in_pieces, scale_add_in_pieces

if TYPE_CHECKING:
    from ..kernels.conv3x3 import Config

log = logging.getLogger(__name__)

CONV_IMPLS = ("auto", "triton", "cudnn", "cudnn-fused")
HEAD_IMPLS = ("cudnn", "triton")  # the head's convolution where cuDNN runs the rest


CUDNN_FLOAT16_NOTE = (
    "cuDNN's float16 convolution returned 0 where the exact value was -72000 (an H200, cuDNN 9.19, "
    "benchmarks/fp16_overflow_probe.py), a finite wrong value that no check of the output can see; "
    "so float16 on cuDNN is guarded by bounds: each convolution's output is bounded from its "
    "input's channel magnitudes (measured in the channel-sums pass) and its weights, and the "
    "overflow flag is set where a bound reaches float16's range"
)
BOUND_MARGIN = 0.99  # of float16's range: room for the float32 rounding of a bound and of the sums


def _cudnn_fused_available(device: torch.device) -> bool:
    return device.type == "cuda" and hasattr(torch.ops.aten, "cudnn_convolution_relu")


@dataclass
class FusedBlocks:
    """The fused inference path of every block of a model, in one compute dtype on one device.

    ``conv`` is the convolution implementation (``CONV_IMPLS``); ``auto`` is decided by
    ``choose`` on first use. ``flag`` is the overflow flag the kernels set in float16."""

    model: MCAN
    device: torch.device
    dtype: torch.dtype
    conv: str = "auto"
    cache: ChoiceCache | None = None  # choices kept between processes (None: time in each)
    blocks: list[BlockWeights] = field(init=False)
    timings: dict[str, float] = field(init=False, default_factory=dict)  # ms per RCAB, from choose
    config: Config | None = field(init=False, default=None)  # the 64-channel convolutions' launch
    maps_config: Config | None = field(init=False, default=None)  # the fastest Triton launch, for the maps
    asked: str = field(init=False, default="auto")  # what conv was before "auto" was decided
    head: str = field(init=False, default="auto")  # HEAD_IMPLS as choose timed it, or "auto": as conv
    _local: threading.local = field(init=False, default_factory=threading.local, repr=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.conv not in CONV_IMPLS:
            raise MCANError(f"fused convolution '{self.conv}': choose one of {', '.join(CONV_IMPLS)}")
        if not all(isinstance(b, MCANBlock) for b in self.model.blocks):
            raise MCANError("the fused path runs MCAN blocks; the toy block has no channel attention to fuse")
        self.asked = self.conv
        self.blocks = [block_weights(cast(MCANBlock, b), self.dtype, self.device) for b in self.model.blocks]
        self.check = self.dtype == torch.float16  # float16 can overflow; bf16 and float32 cannot
        if self.conv == "auto" and self.device.type != "cuda":
            self.conv = "triton"  # the interpreter (tests): cuDNN is a GPU library
        if self.conv == "cudnn-fused" and not _cudnn_fused_available(self.device):
            raise MCANError("fused convolution 'cudnn-fused' needs CUDA; use cudnn")

    @property
    def flag(self) -> torch.Tensor:
        """This thread's overflow flag (int32 on the device), so that the guards of two threads
        that share a runner never see, or clear, each other's overflows."""
        flag = getattr(self._local, "flag", None)
        if flag is None:
            with torch.inference_mode(False):  # a normal tensor: guards outside inference mode zero it
                flag = self._local.flag = torch.zeros(1, dtype=torch.int32, device=self.device)
        return flag

    # ---- one convolution with its epilogue -------------------------------------------------
    def due_flag(self) -> torch.Tensor | None:
        """The overflow flag where the dtype can overflow (float16), else None."""
        return self.flag if self.check else None

    def _config(self, cw: ConvWeights) -> Config | None:
        """The chosen launch for the 64-channel convolutions (where cuDNN was chosen for whole
        maps, the fastest Triton launch that agreed with it); the default for the 3-channel ends."""
        chosen = self.config if self.conv == "triton" else self.maps_config
        return chosen if min(cw.packed.cin, cw.packed.cout) >= 16 else None

    # ---- float16 on cuDNN: bounds instead of an output check (CUDNN_FLOAT16_NOTE) ---------------
    def _bounded(self) -> bool:
        return self.check and self.conv != "triton"

    def _bound(self, cw: ConvWeights, m: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """(B, C_out) float32 that no output of convolution ``cw`` can exceed in magnitude on an
        input whose channels stay within ``m`` (B, C_in): sum |w| |x| (+ |bias|). Sets the
        overflow flag where it reaches float16's range (a NaN or inf bound too)."""
        b = m @ cw.abs_taps.T
        return self._trip(b + cw.bias.abs() if bias else b)

    def _trip(self, bound: torch.Tensor) -> torch.Tensor:
        from ..kernels.conv3x3 import dtype_limit

        bad = (bound < BOUND_MARGIN * dtype_limit(self.dtype)).logical_not().any()
        self.flag.copy_(torch.maximum(self.flag, bad.to(torch.int32)))
        return bound

    def _on_triton(self, cw: ConvWeights, bounded: bool) -> bool:
        """Whether convolution ``cw`` runs on the Triton kernel: float16 wherever no bound guards
        cuDNN's; the head (its 3 input channels: im2col) as ``head`` was timed; the rest as
        ``conv``."""
        if self.check and not bounded:
            return True
        if cw.packed.im2col and self.head != "auto":
            return self.head == "triton"
        return self.conv == "triton"

    def conv3x3(
        self,
        x: torch.Tensor,
        cw: ConvWeights,
        *,
        relu: bool = False,
        residual: torch.Tensor | None = None,
        clamp: bool = False,
        origin: tuple[int, int] = (0, 0),
        size: tuple[int, int] | None = None,
        out: torch.Tensor | None = None,
        bounded: bool = False,
    ) -> torch.Tensor:
        """A convolution with bias, ReLU, residual and clamp, in the chosen implementation.
        float16 runs cuDNN only where the caller bounds it (``bounded``: the whole-block path);
        elsewhere (the layer steps) the Triton convolution, whose flag guards it, runs."""
        if self._on_triton(cw, bounded):
            from ..kernels.conv3x3 import conv3x3

            y, _ = conv3x3(
                x,
                cw.packed,
                relu=relu,
                residual=residual,
                clamp=clamp,
                flag=self.due_flag(),
                origin=origin,
                size=size,
                out=out,
                config=self._config(cw),
            )
            return y
        from ..kernels.epilogue import bias_act

        if size is not None and (origin != (0, 0) or tuple(size) != tuple(x.shape[2:])):
            raise MCANError("output regions run on the Triton convolution only")
        if self.conv == "cudnn-fused" and relu and residual is None and not clamp and out is None:
            return torch.ops.aten.cudnn_convolution_relu(x, cw.weight, cw.bias_c, [1, 1], [1, 1], [1, 1], 1)
        y = F.conv2d(x, cw.weight, None, padding=1)
        return bias_act(
            y,
            cw.bias,
            relu=relu,
            residual=residual,
            clamp=clamp,
            flag=self.due_flag(),
            out=out if out is not None else y,
        )

    # ---- one RCAB ----------------------------------------------------------------------------
    def residual(self, h: torch.Tensor, rc: RCABWeights, t: torch.Tensor | None = None) -> torch.Tensor:
        """r = conv2(relu(conv1(h))) with both biases: what the exact tiled plan pools."""
        t = self.conv3x3(h, rc.conv1, relu=True, out=t)
        return self.conv3x3(t, rc.conv2)  # float16: Triton (no bound runs through the layer steps)

    def rcab(
        self,
        h: torch.Tensor,
        rc: RCABWeights,
        out: torch.Tensor,
        bufs: dict[str, torch.Tensor],
        bound: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """out = h + CA(conv2(relu(conv1(h)))) with the image's own channel statistics;
        ``out`` may be ``h`` (in place). ``bufs`` holds reusable maps between RCABs. ``bound``
        (float16 on cuDNN): h's channel magnitudes at most; returns out's (else None)."""
        from ..kernels.rcab import gate

        hw = h.shape[2] * h.shape[3]
        if self.conv == "triton":  # two convolutions, no pass of their own (runners/conv_sums.py)
            from ..kernels.conv3x3 import conv3x3

            cfg = self.config
            t, t_sums = conv3x3(
                h, rc.conv1.packed, relu=True, sums=True, flag=self.due_flag(), out=bufs.get("t"), config=cfg
            )
            bufs["t"] = t
            assert t_sums is not None
            s = gate(conv3x3_sums(t, t_sums, rc.conv2.weight, rc.conv2.bias), hw, *rc.attention)
            conv3x3(t, rc.conv2.packed, scale=s, residual=h, flag=self.due_flag(), out=out, config=cfg)
            return None
        t = self.conv3x3(h, rc.conv1, relu=True, bounded=True)
        if bound is not None:  # conv1's output with its bias (the ReLU keeps the bound), conv2's without
            self._bound(rc.conv2, self._bound(rc.conv1, bound), bias=False)
        y = F.conv2d(t, rc.conv2.weight, None, padding=1)  # conv2 without its bias:
        del t
        sums, ymax = channel_sums_in_pieces(y, maxes=bound is not None)  # the bias enters the statistics
        sums += rc.conv2.bias * hw  # and the residual as constants: the sums are one read-only pass
        if self.check:
            self.flag.copy_(torch.maximum(self.flag, (~torch.isfinite(sums)).any().to(torch.int32)))
        s = gate(sums, hw, *rc.attention)
        k = rc.conv2.bias * s
        scale_add_in_pieces(y, s, h, k, out)
        if bound is None or ymax is None:
            return None
        return self._trip(bound + s * ymax + k.abs())  # |h + s y + k| at most

    # ---- whole blocks ------------------------------------------------------------------------
    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``i`` on a batch (B, 3, H, W) in the compute dtype; returns the same."""
        bw = self.blocks[i]
        if self.conv == "auto":
            self.choose(x.shape[2], x.shape[3])
        # float16 on cuDNN: channel magnitudes of the input (3 channels: a 1/21 pass), then bounds
        m = channel_sums_in_pieces(x, maxes=True)[1] if self._bounded() else None
        f = self.conv3x3(x, bw.head, bounded=True)
        mf = mh = self._bound(bw.head, m) if m is not None else None
        h = torch.empty_like(f)
        bufs: dict[str, torch.Tensor] = {}
        for k, rc in enumerate(bw.rcabs):
            mh = self.rcab(f if k == 0 else h, rc, h, bufs, mh)  # the first writes h, the others in place
        if not bw.rcabs:
            h.copy_(f)
        g = self.conv3x3(h, bw.body, residual=f, out=bufs.get("t"), bounded=True)
        if m is not None and mh is not None and mf is not None:
            self._bound(bw.tail, self._trip(self._bound(bw.body, mh) + mf))
        del h, f
        return self.conv3x3(g, bw.tail, residual=x, clamp=bw.clamp, bounded=True)

    def finish(self, i: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The block's output from its input and its last RCAB's output (layer plans)."""
        bw = self.blocks[i]
        f = self.conv3x3(x, bw.head)
        g = self.conv3x3(h, bw.body, residual=f, out=f)
        return self.conv3x3(g, bw.tail, residual=x, clamp=bw.clamp)

    def block_on_maps(
        self, i: int, x: torch.Tensor, cores: list[Core], tick: Callable[[int], None] | None = None
    ) -> torch.Tensor:
        """Block ``i`` on one image (1, 3, H, W) with exact whole-image statistics over two
        full-size maps, in parts of at most a core's pixels (``cores``: (y0, y1, x0, x1) that
        cover the image; ``runners.fused_maps``): output regions of the Triton convolution, or
        where "auto" chose cuDNN for whole maps, cuDNN in full-width row bands (float16: the
        fastest Triton launch that agreed with cuDNN, whose flag guards it)."""
        if self.conv == "triton":
            return block_on_regions(self, i, x, cores, tick)
        if self.asked != "auto":
            raise MCANError(f"block_on_maps runs the convolution 'auto' chose; '{self.asked}' was asked for")
        if not self.check:
            return block_on_bands(self, i, x, cores, tick)
        maps = copy.copy(self)  # shares the weights and the flags
        maps.conv, maps.config = "triton", self.maps_config
        return block_on_regions(maps, i, x, cores, tick)

    # ---- choosing the implementation ---------------------------------------------------------
    def candidates(self) -> list[tuple[str, Config | None]]:
        """(implementation, launch) pairs to time: every GPU launch of the Triton convolution
        (one on the interpreter), cuDNN, and cuDNN's fused conv1 where it applies."""
        from ..kernels.conv3x3 import default_config, gpu_configs

        configs = gpu_configs(self.dtype) if self.device.type == "cuda" else (default_config(self.device),)
        out: list[tuple[str, Config | None]] = [("triton", c) for c in configs]
        out.append(("cudnn", None))  # float16: guarded by bounds (CUDNN_FLOAT16_NOTE)
        if _cudnn_fused_available(self.device):
            out.append(("cudnn-fused", None))
        return out

    def choose(self, h: int, w: int, side: int | None = None, again: bool = False) -> str:
        """Time one RCAB in every candidate on a (1, C, h, w) map, the size the block runs at
        (``side`` caps each side, for tests); keep the candidates whose result agrees with
        cuDNN's and take the fastest. The size matters: on an H200 the Triton convolution
        looked as fast as cuDNN's on a 1024x1024 map and was 3x slower at 12 MP. Once per
        runner (the first thread to ask decides; the others wait for it), unless ``again``."""
        with self._lock:
            if self.conv != "auto" and not again:
                return self.conv
            rc = self.blocks[0].rcabs[0] if self.blocks and self.blocks[0].rcabs else None
            if rc is None:
                self.conv = "triton"
                return self.conv
            c = rc.conv1.weight.shape[0]
            size = (h, w) if side is None else (min(h, side), min(w, side))
            key = choice_key(self.device, self.dtype, c, *size)
            if self._from_cache(key):
                return self.conv
            g = torch.Generator(device=self.device).manual_seed(0)
            hmap = torch.rand(1, c, *size, generator=g, device=self.device, dtype=self.dtype)
            hmap = hmap.contiguous(memory_format=torch.channels_last)
            ok = self._trials(hmap, rc)
            if not ok:
                raise MCANError("no fused convolution ran on this device; use --rcab torch")
            best = min(ok, key=lambda n: self.timings[n])
            self.conv, self.config = ok[best]
            tritons = [n for n in ok if ok[n][0] == "triton"]
            maps = min(tritons, key=lambda n: self.timings[n]) if tritons else None
            self.maps_config = ok[maps][1] if maps else None
            # float16 on Triton computes no bounds, which a cuDNN head would need
            self.head = "triton" if self.conv == "triton" and self.check else self._choose_head(size)
            log.info(
                "fused RCAB convolutions on %dx%d %s, ms per RCAB: %s; using %s%s",
                hmap.shape[3],
                hmap.shape[2],
                str(self.dtype).replace("torch.", ""),
                ", ".join(f"{n} {t:.3f}" for n, t in self.timings.items()),
                best,
                f", the head on {self.head}",
            )
            if self.cache is not None:
                self.cache.put(key, best, maps, self.head, self._candidate_names())
            return self.conv

    def _choose_head(self, size: tuple[int, int]) -> str:
        """Time the head (3 -> C channels at ``size``) on cuDNN with its epilogue pass against
        the Triton convolution; the faster of those that agree with cuDNN's (timings "head ...")."""
        from ..kernels.conv3x3 import conv3x3

        head = self.blocks[0].head
        g = torch.Generator(device=self.device).manual_seed(1)
        x = torch.rand(1, head.packed.cin, *size, generator=g, device=self.device, dtype=self.dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        cudnn = copy.copy(self)  # shares the weights and the flags
        cudnn.head = "cudnn"
        runs: dict[str, Callable[[], torch.Tensor]] = {
            "cudnn": partial(cudnn.conv3x3, x, head, bounded=True),
            "triton": lambda: conv3x3(x, head.packed, flag=self.due_flag())[0],
        }
        ref = runs["cudnn"]()
        chosen, best = "cudnn", float("inf")
        for impl, run in runs.items():
            try:
                if impl != "cudnn" and not agree(run(), ref, self.dtype):  # the run also warms it up
                    log.warning("fused head: the %s convolution disagrees with cuDNN's here; not used", impl)
                    continue
                ms = self.timings[f"head {impl}"] = time_ms(run, self.device)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is not chosen
                log.warning("fused head: the %s convolution failed here (%s); not used", impl, str(exc)[:200])
                continue
            if ms < best:
                chosen, best = impl, ms
        self.flag.zero_()
        return chosen

    def _candidate_names(self) -> str:
        return ", ".join(candidate_name(impl, cfg) for impl, cfg in self.candidates())

    def _from_cache(self, key: str) -> bool:
        """Take the choice an earlier process made for ``key`` among the same candidates: one
        made before a candidate was added never saw it."""
        entry = self.cache.get(key) if self.cache is not None else None
        if entry is None or entry.get("candidates") != self._candidate_names():
            return False  # kept by a version with other candidates: timed again
        names = {candidate_name(impl, cfg): (impl, cfg) for impl, cfg in self.candidates()}
        choice, maps, head = entry.get("choice"), entry.get("maps"), entry.get("head")
        if choice not in names or (maps is not None and maps not in names) or head not in HEAD_IMPLS:
            return False  # (or no head choice): timed again
        self.conv, self.config = names[choice]
        self.maps_config = names[maps][1] if maps else None
        self.head = str(head)
        assert self.cache is not None
        log.info(
            "fused RCAB convolution for %s: %s, the head on %s, as timed before (kept in %s)",
            key,
            choice,
            head,
            self.cache.path,
        )
        return True

    def _trials(self, hmap: torch.Tensor, rc: RCABWeights) -> dict[str, tuple[str, Config | None]]:
        """Run and time each candidate on a copy of this object (this one is left as it is),
        cuDNN first as the reference; the others are compared with it at once and their outputs
        dropped. Out-of-memory errors are not a candidate's failure: they propagate."""
        ref: torch.Tensor | None = None
        ok: dict[str, tuple[str, Config | None]] = {}
        order = sorted(self.candidates(), key=lambda c: c[0] != "cudnn")
        for impl, cfg in order:
            name = candidate_name(impl, cfg)
            trial = copy.copy(self)  # shares the weights and the flags
            trial.conv, trial.config = impl, cfg
            try:
                out = torch.empty_like(hmap)
                trial.rcab(hmap, rc, out, {})  # warm-up: compiles, cuDNN's plan for this shape
                self.timings[name] = time_ms(partial(trial.rcab, hmap, rc, out, {}), self.device)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is not chosen
                log.warning("fused RCAB: the %s convolution failed here (%s); not used", name, str(exc)[:200])
                continue
            if impl == "cudnn":
                ref = out
            elif ref is not None and not agree(out, ref, self.dtype):
                log.warning("fused RCAB: the %s convolution disagrees with cuDNN's here; not used", name)
                self.timings.pop(name)
                continue
            ok[name] = (impl, cfg)
        self.flag.zero_()
        return ok
