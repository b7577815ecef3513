"""Upscale image files with a trained model: read, optionally pre-resize, tile, write atomically.

For a real low-resolution photo, ``scale`` > 1 first resizes it bicubically to the target size
(the model restores detail at that size, as it was trained to); ``scale`` 1 takes input already
at the target size, like the training pairs. Alpha is resized the same way and carried through
unchanged by the model; gray and 16-bit files come back gray and 16-bit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .device_io import DeviceIO, Pending
from .errors import MCANError
from .io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    decode_array,
    list_images,
    output_depth,
    pixel_info,
    read_photo_array,
    write_image,
    write_pixels,
)
from .metadata import EncodeOptions, PhotoMeta
from .runners import Runner
from .tiling import TileConfig, TileReport, planned_windows, upscale_tensor

log = logging.getLogger(__name__)


def resize(arr: np.ndarray, scale: float) -> np.ndarray:
    """Bicubic resize of (H, W[, C]) float32 by ``scale``, clipped to [0, 1]."""
    import cv2

    if scale == 1:
        return arr
    h, w = arr.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.clip(cv2.resize(arr, size, interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes."""

    src: Path
    dst: Path


def plan_jobs(inputs: list[str | Path], out: str | Path, suffix: str | None = None) -> list[Job]:
    """Map input files and folders (their images, not recursive) to output paths in ``out``.

    A single input file with an ``out`` that has an image suffix is written to exactly ``out``.
    An output path equal to its input is refused.
    """
    out = Path(out)
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise MCANError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(item)  # a missing or bad file is reported when it is processed
    if len(files) == 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        jobs = [Job(files[0], out)]
    else:
        jobs = [Job(f, out / (f.stem + (suffix or f.suffix or ".png"))) for f in files]
    for job in jobs:
        if job.src.exists() and job.dst.exists() and job.src.resolve() == job.dst.resolve():
            raise MCANError(f"{job.dst}: output path equals its input; choose another -o")
    dsts = [j.dst for j in jobs]
    dupes = sorted({str(d) for d in dsts if dsts.count(d) > 1})
    if dupes:
        raise MCANError(f"two inputs would write the same output {dupes[0]}; upscale them into separate folders")
    return jobs


@dataclass
class Prepared:
    """An input decoded and resized, ready for the engine, with what its output needs."""

    x: torch.Tensor  # (3, H, W) float32 in [0, 1], upright (EXIF orientation applied)
    alpha: np.ndarray | None
    bit_depth: int
    gray: bool
    meta: PhotoMeta = dataclasses.field(default_factory=PhotoMeta)  # what the output carries
    upload: Pending | None = None  # x on its way to a GPU (``x`` is then that device tensor)


def prepare(job: Job, scale: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS, io: DeviceIO | None = None) -> Prepared:
    """Read ``job.src`` and resize it (and its alpha) by ``scale``; ``max_pixels`` bounds the
    file's declared size (before decoding) and the size after ``scale``. With a GPU's ``io``
    the image goes up at once on a side stream: colour pixels at the target size as stored
    integers, converted on the device; anything else as float32 from pinned memory."""
    arr, meta = read_photo_array(job.src, max_pixels)
    depth, gray, has_alpha = pixel_info(arr, job.src)
    h, w = arr.shape[:2]
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    if th * tw > max_pixels:
        raise MCANError(
            f"{job.src}: {w}x{h} x {scale:g} = {tw}x{th} = {tw * th / 1e6:.1f} MP, above the "
            f"limit of {max_pixels / 1e6:.1f} MP; lower --scale or raise --max-pixels"
        )
    if io is not None and io.cuda and scale == 1 and not gray and depth in (8, 16):
        up = io.upload(arr, "bgr")
        alpha = arr[:, :, 3].astype(np.float32) / (255.0 if depth == 8 else 65535.0) if has_alpha else None
        return Prepared(up.value, alpha, depth, gray, meta, up)
    img = decode_array(arr, job.src)
    rgb = resize(img.rgb, scale)
    alpha = resize(img.alpha, scale) if img.alpha is not None else None
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    upload = io.upload(x) if io is not None and io.cuda else None
    return Prepared(x if upload is None else upload.value, alpha, img.bit_depth, img.gray, meta, upload)


def fetch_result(job: Job, prepared: Prepared, out: torch.Tensor, io: DeviceIO | None = None) -> Pending:
    """The model's output on its way to the host: on a GPU as the stored pixels of the output
    file (rounded on the device; gray outputs, a mean of colours, as float), else as is."""
    if io is None or not io.cuda:
        return Pending(out)
    depth = None if prepared.gray else output_depth(prepared.bit_depth, job.dst.suffix or ".png")
    return io.download(out, depth, "rgb")


def write_result(
    job: Job, prepared: Prepared, out: torch.Tensor | Pending, encode: EncodeOptions | None = None
) -> None:
    """Write the model's output (a float tensor, or ``fetch_result``'s pixels) with the input's
    alpha, bit depth, colour kind and metadata (colour profile, EXIF, text, DPI; orientation 1,
    since the pixels are upright), atomically."""
    result = out.result() if isinstance(out, Pending) else out
    options = encode or EncodeOptions()
    if result.dtype in (torch.uint8, torch.uint16):  # pixels encoded on the device
        pixels = result.numpy()
        if prepared.alpha is not None:  # as io.encode_array rounds it
            peak = 255.0 if result.dtype == torch.uint8 else 65535.0
            a = np.clip(np.rint(prepared.alpha * peak), 0, peak).astype(pixels.dtype)
            pixels = np.concatenate([pixels, a[:, :, None]], axis=2)
        write_pixels(job.dst, pixels, meta=prepared.meta, options=options)
        return
    rgb = result.float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    write_image(
        job.dst,
        rgb,
        alpha=prepared.alpha,
        bit_depth=16 if prepared.bit_depth > 8 else 8,
        gray=prepared.gray,
        meta=prepared.meta,
        options=options,
    )


def upscale_file(
    runner: Runner,
    job: Job,
    cfg: TileConfig,
    scale: float = 1.0,
    progress: Callable[[int], None] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    encode: EncodeOptions | None = None,
) -> TileReport:
    """Upscale one file into ``job.dst`` (written atomically; ``encode``: JPEG/WebP quality)."""
    io = DeviceIO(runner.device) if runner.device.type == "cuda" else None
    prepared = prepare(job, scale, max_pixels, io)
    x = io.ready(prepared.upload) if io is not None and prepared.upload is not None else prepared.x
    out, report = upscale_tensor(runner, x, cfg, progress)
    write_result(job, prepared, fetch_result(job, prepared, out, io), encode)
    return report


@dataclass
class BatchStats:
    """What ``upscale_jobs`` did: files written, skipped and failed, and where the time went.

    ``decode_s``, ``model_s`` and ``encode_s`` are summed over images (decode and encode run on
    worker threads, so with pipelining their sum can exceed ``wall_s``)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    decode_s: float = 0.0  # reading, decoding and resizing (``prepare``)
    model_s: float = 0.0  # the model (``upscale_tensor``), on the calling thread
    encode_s: float = 0.0  # encoding and writing (``write_result``)
    wall_s: float = 0.0
    overflows: int = 0  # float16 blocks redone in the safe dtype, over all images


class _Inline:
    """Stands in for a thread pool when ``prefetch`` is 0: runs each call at once, here."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed on through the future, as a pool does
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def _log_failure(job: Job, exc: Exception) -> None:
    if isinstance(exc, MCANError):
        log.error("%s", exc)
    else:
        log.error(
            "%s: unexpected %s: %s (--debug for the traceback)",
            job.src,
            type(exc).__name__,
            (str(exc).strip().splitlines() or [""])[0][:300],
        )


def default_prefetch(runner: Runner) -> int:
    """Images to read ahead and write behind: 2, or 0 for PyTorch on a CPU. Its OpenMP threads
    wait for the slowest of them at every layer, so file work on a core the model uses slows the
    model by more than the work itself (8 x 4 MP photos on 2 cores: 0.90-0.97x pipelined); a GPU
    idles while files are read, and OpenVINO's work-stealing threads absorb it (1.03x there)."""
    from .runners import TorchRunner

    return 0 if runner.device.type == "cpu" and isinstance(runner, TorchRunner) else 2


def upscale_jobs(
    runner: Runner,
    jobs: Sequence[Job],
    cfg: TileConfig = TileConfig(),
    scale: float = 1.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    overwrite: bool = False,
    prefetch: int = 2,
    workers: int | None = None,
    debug: bool = False,
    progress: bool = True,
    encode: EncodeOptions | None = None,
) -> BatchStats:
    """Upscale ``jobs`` in order, overlapping file reading and writing with the model.

    Why: decoding and resizing a large PNG, and encoding and writing the result, take about as
    long as the model on a GPU; done one after another, the accelerator waits for the files.
    Here the model runs on the calling thread while a small pool (``workers`` threads, default
    ``min(prefetch, 2)``; OpenCV and NumPy release the GIL) decodes the next images and another
    writes finished ones.

    Bounded: at most ``prefetch`` decodes are submitted ahead of the image in the model, and at
    most ``prefetch`` results wait to be written (the model waits for the oldest write before
    handing on one more), so at most ``2 * prefetch + 1`` decoded images exist at once that are not
    written yet, whatever the number of jobs. A waiting write keeps only the output and its alpha,
    not the input. ``prefetch=0`` is the plain sequential loop on the calling thread, no threads.

    Semantics, the same for every ``prefetch``: an existing output is skipped unless ``overwrite``
    (checked just before its decode is submitted); outputs are written atomically; a bad file
    (``MCANError``) is logged by name and the batch goes on; any other exception is logged with the
    file's name and the first line of its message; both count as failed, and ``debug=True``
    re-raises instead (after the writes already handed on have finished). Every outcome is logged
    in job order ("src -> dst (WxH): summary", "skip ...", errors), whichever write finishes first,
    and each output depends on its own input only, so files are identical to the sequential run's.
    ``KeyboardInterrupt`` and ``SystemExit`` propagate after queued decodes and writes are
    cancelled and running ones have finished (no partial files: writes are atomic); the pools
    are always shut down on return.

    ``progress`` shows an images bar and a per-image tile bar (tqdm, logging routed past them).
    """
    import contextlib
    import threading
    import time
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if prefetch < 0:
        raise MCANError(f"prefetch = {prefetch}: must be >= 0")
    if workers is not None and workers < 1:
        raise MCANError(f"workers = {workers}: must be >= 1")
    t_start = time.perf_counter()
    stats = BatchStats()
    lock = threading.Lock()  # the workers add their seconds to stats

    io = DeviceIO(runner.device) if runner.device.type == "cuda" else None

    def decode(job: Job) -> Prepared:
        t0 = time.perf_counter()
        try:
            return prepare(job, scale, max_pixels, io)
        finally:
            with lock:
                stats.decode_s += time.perf_counter() - t0

    def write(job: Job, prepared: Prepared, out: Pending) -> None:
        t0 = time.perf_counter()
        try:
            write_result(job, prepared, out, encode)
        finally:
            with lock:
                stats.encode_s += time.perf_counter() - t0

    n_workers = workers or max(1, min(prefetch, 2))
    pools: tuple[Any, Any] = (_Inline(), _Inline())
    if prefetch:
        pools = (
            ThreadPoolExecutor(n_workers, thread_name_prefix="mcan-decode"),
            ThreadPoolExecutor(n_workers, thread_name_prefix="mcan-write"),
        )
    decoder, writer = pools
    # jobs whose decode was submitted (a future) or that are skipped (None), in job order
    ahead: deque[tuple[Job, Future | None]] = deque()
    # outcomes in job order, logged and counted from the front: a write (a future, with the
    # image's size and report), a skip ("skip") or a failure before the write (the exception)
    outcomes: deque[tuple[Job, Future | str | Exception, tuple[int, int, TileReport] | None]] = deque()
    cursor = n_decoding = n_writing = 0
    interrupted = False
    result: Pending | None = None

    def refill() -> None:
        """Submit decodes until ``prefetch + 1`` (the next image and ``prefetch`` after it) are on
        their way; skipped jobs, decided here before any decoding, take no place."""
        nonlocal cursor, n_decoding
        while cursor < len(jobs) and n_decoding < prefetch + 1:
            job = jobs[cursor]
            cursor += 1
            if job.dst.exists() and not overwrite:
                ahead.append((job, None))
            else:
                ahead.append((job, decoder.submit(decode, job)))
                n_decoding += 1

    def settle(images: Any, keep_writing: int) -> None:
        """Log and count outcomes from the front: all that are finished, and more (waiting for
        them) until at most ``keep_writing`` writes are still pending."""
        nonlocal n_writing
        while outcomes:
            job, what, info = outcomes[0]
            if isinstance(what, Future):
                if not what.done() and n_writing <= keep_writing:
                    return
                n_writing -= 1
                try:
                    what.result()
                except Exception as exc:  # one bad file must not stop a batch
                    outcomes.popleft()
                    if debug:
                        raise
                    _log_failure(job, exc)
                    stats.failed += 1
                else:
                    outcomes.popleft()
                    assert info is not None
                    w, h, report = info
                    log.info("%s -> %s (%dx%d): %s", job.src, job.dst, w, h, report.summary())
                    stats.done += 1
                    stats.overflows += report.overflows
            elif what == "skip":
                outcomes.popleft()
                log.info("skip %s: %s exists (use --overwrite)", job.src, job.dst)
                stats.skipped += 1
            else:
                outcomes.popleft()
                assert isinstance(what, Exception)
                _log_failure(job, what)
                stats.failed += 1
            images.update(1)

    try:
        with (
            logging_redirect_tqdm() if progress else contextlib.nullcontext(),
            tqdm(total=len(jobs), desc="images", unit="img", disable=not progress) as images,
        ):
            while True:
                refill()
                if not ahead:
                    break
                job, fut = ahead.popleft()
                if fut is None:
                    outcomes.append((job, "skip", None))
                    settle(images, n_writing)
                    continue
                n_decoding -= 1
                try:
                    prepared = fut.result()
                    del fut
                    _, h, w = prepared.x.shape
                    with tqdm(
                        total=planned_windows(runner, h, w, cfg),
                        desc=job.src.name,
                        unit="tile",
                        leave=False,
                        disable=not progress,
                    ) as bar:
                        t0 = time.perf_counter()
                        try:
                            x = prepared.x if io is None or prepared.upload is None else io.ready(prepared.upload)
                            out, report = upscale_tensor(runner, x, cfg, progress=bar.update)
                            result = fetch_result(job, prepared, out, io)  # on its way to the host
                            del x
                        finally:
                            stats.model_s += time.perf_counter() - t0
                except Exception as exc:  # one bad file must not stop a batch
                    if debug:
                        raise
                    # logged in turn; its traceback's frames would keep the image alive till then
                    outcomes.append((job, exc.with_traceback(None), None))
                    prepared = out = None
                    result = None
                    settle(images, n_writing)
                    continue
                settle(images, max(prefetch, 1) - 1)  # room for one more write
                # the write needs the output, alpha and format, not the input
                slim = dataclasses.replace(prepared, x=prepared.x.new_empty(0), upload=None)
                assert result is not None
                outcomes.append((job, writer.submit(write, job, slim, result), (w, h, report)))
                n_writing += 1
                del prepared, slim, out, result
                settle(images, n_writing)
            settle(images, 0)
    except BaseException as exc:
        interrupted = not isinstance(exc, Exception)
        raise
    finally:
        decoder.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=interrupted)
    stats.wall_s = time.perf_counter() - t_start
    return stats
