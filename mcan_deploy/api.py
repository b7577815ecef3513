"""The public Python API: ``mcan_deploy.load(path)`` returns an ``Upscaler``.

>>> import numpy as np, mcan_deploy
>>> from mcan_deploy.checkpoint import save_model
>>> from mcan_deploy.model import ModelConfig, build_model
>>> save_model("tiny.safetensors", build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8)))
>>> model = mcan_deploy.load("tiny.safetensors", backend="torch")
>>> model.info.blocks, model.info.receptive_field
((0, 2), 21)
>>> photo = np.zeros((40, 60, 3), np.uint8)          # RGB; channel_order="bgr" for OpenCV arrays
>>> out = model.upscale(photo)
>>> out.shape, out.dtype
((40, 60, 3), dtype('uint8'))

The command-line tool ``mcan-upscale`` is a thin layer over ``load`` and ``Upscaler.upscale_jobs``,
so files written either way are identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar, cast

from .arrays import ChannelOrder, to_engine
from .describe import ModelInfo, describe
from .device_io import DeviceIO
from .errors import MCANError
from .io import DEFAULT_MAX_PIXELS
from .metadata import EncodeOptions
from .runners import LayerRunner, Runner, load_runner
from .tiling import CAStats, PlanName, TileConfig, TileReport, default_tile, upscale_tensor
from .upscale import BatchStats, Job, default_prefetch, plan_jobs, upscale_file, upscale_jobs

Image = TypeVar("Image")


class Upscaler:
    """A loaded model and how it runs: ``info`` (the file's description), ``runner`` (the
    back-end), ``config`` (tiling: statistics mode, plan, memory budget). Methods take images
    as callers hold them (``mcan_deploy.arrays``), files and folders."""

    def __init__(self, runner: Runner, info: ModelInfo, config: TileConfig) -> None:
        self.runner = runner
        self.info = info
        self.config = config
        self._io = DeviceIO(runner.device) if runner.device.type == "cuda" else None

    def __repr__(self) -> str:
        dtype = str(getattr(self.runner, "dtype", "")).replace("torch.", "")
        return (
            f"Upscaler({self.info.path!r}, {type(self.runner).__name__} on {self.runner.device}"
            f"{', ' + dtype if dtype else ''}, {self.config.ca_stats} statistics)"
        )

    def upscale(self, image: Image, channel_order: ChannelOrder = "rgb") -> Image:
        """Restore ``image`` (same size in, same size out); returns the same kind, shape, dtype and
        channel order. numpy arrays are RGB(A) unless ``channel_order="bgr"`` (OpenCV's order)."""
        inputs, back = to_engine(image, channel_order, self._io)
        return back([upscale_tensor(self.runner, x, self.config)[0] for x in inputs])

    def upscale_file(
        self,
        src: str | Path,
        dst: str | Path,
        *,
        scale: float = 1.0,
        overwrite: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        encode: EncodeOptions | None = None,
    ) -> TileReport | None:
        """Upscale one image file into ``dst`` (written atomically, alpha, bit depth and gray kept);
        ``scale`` resizes bicubically first. An existing ``dst`` is kept (returns None) unless
        ``overwrite``. Bad files raise ``MCANError`` naming the file. The output displays as the
        input does and carries its colour profile, EXIF, text and DPI (``metadata``);
        ``encode`` sets JPEG and WebP quality."""
        job = Job(Path(src), Path(dst))
        if job.dst.exists() and not overwrite:
            return None
        return upscale_file(self.runner, job, self.config, scale, max_pixels=max_pixels, encode=encode)

    def upscale_folder(
        self,
        inputs: str | Path | Sequence[str | Path],
        out: str | Path,
        *,
        suffix: str | None = None,
        scale: float = 1.0,
        overwrite: bool = False,
        prefetch: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = False,
        encode: EncodeOptions | None = None,
    ) -> BatchStats:
        """Upscale image files and folders into ``out`` as ``mcan-upscale`` does: existing outputs
        skipped unless ``overwrite``, a bad file logged and counted in the result's ``failed``
        while the others go on, reading and writing pipelined (``prefetch``)."""
        items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        return self.upscale_jobs(
            plan_jobs(items, out, suffix),
            scale=scale,
            overwrite=overwrite,
            prefetch=prefetch,
            max_pixels=max_pixels,
            progress=progress,
            encode=encode,
        )

    def upscale_jobs(
        self,
        jobs: Sequence[Job],
        *,
        scale: float = 1.0,
        overwrite: bool = False,
        prefetch: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = False,
        debug: bool = False,
        encode: EncodeOptions | None = None,
        started: Mapping[Path, Future] | None = None,
    ) -> BatchStats:
        """Planned jobs (``upscale.plan_jobs``), e.g. one process's share under torchrun;
        ``started``: reads begun while the model loaded (``upscale.read_first``)."""
        return upscale_jobs(
            self.runner,
            jobs,
            self.config,
            scale,
            max_pixels,
            overwrite=overwrite,
            prefetch=default_prefetch(self.runner) if prefetch is None else prefetch,
            debug=debug,
            progress=progress,
            encode=encode,
            started=started,
        )


def load(
    path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "auto",
    *,
    precision: str = "auto",
    rcab: str = "auto",
    fused_conv: str = "auto",
    threads: int | None = None,
    ca_stats: str = "auto",
    plan: str = "auto",
    tile: int | None = None,
    batch: int | None = None,
    max_memory: float | None = None,
    cache_dir: str | Path | None = None,
    trust_pickle: bool = False,
) -> Upscaler:
    """Load a model file (``model.safetensors``, a training checkpoint, ``.onnx`` or OpenVINO
    ``.xml``) ready to upscale. Every option means what the ``mcan-upscale`` option of the same
    name means (``max_memory`` in GB); ``auto`` picks as the CLI does and the log says why."""
    runner = load_runner(
        path,
        device,
        dtype,
        rcab,
        trust_pickle,
        backend=backend,
        precision=precision,
        threads=threads,
        cache_dir=cache_dir,
        conv=fused_conv,
    )
    info = describe(path, trust_pickle)
    if ca_stats == "auto":
        ca_stats = "global" if isinstance(runner, LayerRunner) else "tile"
    if max_memory is not None and not max_memory > 0:
        raise MCANError(f"max_memory = {max_memory}: give gigabytes > 0")
    stats = cast(CAStats, ca_stats)  # TileConfig checks the values
    cfg = TileConfig(
        tile=tile or default_tile(stats, runner.device, max(runner.block_radii)),
        batch=batch or (4 if runner.device.type == "cuda" else 1),
        ca_stats=stats,
        plan=cast(PlanName, plan),
        max_memory=int(max_memory * 1e9) if max_memory else None,
    )
    return Upscaler(runner, info, cfg)
