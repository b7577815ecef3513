"""A batch of image files through one runner (``upscale_jobs``, what ``mcan-upscale`` runs):
the files read ahead and written behind the model (``pipeline``), skips, the error policy, the
log in job order and the statistics (``BatchStats``)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..device_io import DeviceIO, Pending
from ..errors import MCANError
from ..io import DEFAULT_MAX_PIXELS
from ..metadata import EncodeOptions
from ..runners import Runner
from ..tiling import TileConfig, TileReport, planned_windows, upscale_tensor
from .files import Prepared, fetch_result, prepare, read_source, write_result
from .jobs import Job
from .pipeline import OrderedPipeline, Outcome

log = logging.getLogger("mcan_deploy.upscale")  # the package's log, whichever part writes


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


def _log_failure(job: Job, exc: BaseException) -> None:
    if isinstance(exc, MCANError):
        log.error("%s", exc)
    else:
        log.error(
            "%s: unexpected %s: %s (--debug for the traceback)",
            job.src,
            type(exc).__name__,
            (str(exc).strip().splitlines() or [""])[0][:300],
        )


def _skipped(job: Job, overwrite: bool) -> bool:
    """An existing output is kept unless ``overwrite``."""
    return job.dst.exists() and not overwrite


def _timed_read(job: Job, max_pixels: int) -> tuple[float, Any]:
    t0 = time.perf_counter()
    source = read_source(job, max_pixels)
    return time.perf_counter() - t0, source


@contextlib.contextmanager
def read_first(
    jobs: Sequence[Job], max_pixels: int = DEFAULT_MAX_PIXELS, overwrite: bool = False
) -> Iterator[dict[Path, Future]]:
    """Read the first file to upscale on a thread of its own while the caller gets the model
    ready, and hand the read to ``upscale_jobs(started=...)``: {source path: future}.

    Why: nothing else overlaps the first file's read. On an H200 host a 12 MP PNG took about
    0.35 s to read, and the model 0.3 s (in a running process) to 0.9 s (in a fresh one) to get
    ready. Nothing is read for a job that would be skipped. A read nobody takes is dropped."""
    first = next((job for job in jobs if not _skipped(job, overwrite)), None)
    if first is None:
        yield {}
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="mcan-read-first")
    try:
        yield {first.src: pool.submit(_timed_read, first, max_pixels)}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def default_prefetch(runner: Runner) -> int:
    """Images to read ahead and write behind: 2, or 0 for PyTorch on a CPU. Its OpenMP threads
    wait for the slowest of them at every layer, so file work on a core the model uses slows the
    model by more than the work itself (8 x 4 MP photos on 2 cores: 0.90-0.97x pipelined); a GPU
    idles while files are read, and OpenVINO's work-stealing threads absorb it (1.03x there)."""
    from ..runners import TorchRunner

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
    started: Mapping[Path, Future] | None = None,
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
    ``started``: reads begun before the call (``read_first``), taken in place of reading again.
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if prefetch < 0:
        raise MCANError(f"prefetch = {prefetch}: must be >= 0")
    if workers is not None and workers < 1:
        raise MCANError(f"workers = {workers}: must be >= 1")
    batch = _Batch(runner, cfg, scale, max_pixels, encode, debug, progress, dict(started or {}))
    with (
        logging_redirect_tqdm() if progress else contextlib.nullcontext(),
        tqdm(total=len(jobs), desc="images", unit="img", disable=not progress) as batch.images,
        OrderedPipeline(
            jobs,
            batch.decode,
            lambda job: _skipped(job, overwrite),
            batch.report,
            prefetch,
            workers or max(1, min(prefetch, 2)),
        ) as pipe,
    ):
        for job, fut in pipe:
            batch.run_one(pipe, job, fut)
    batch.stats.wall_s = time.perf_counter() - batch.t_start
    return batch.stats


@dataclass
class _Batch:
    """One call of ``upscale_jobs``: its settings, statistics and the steps the pipeline runs."""

    runner: Runner
    cfg: TileConfig
    scale: float
    max_pixels: int
    encode: EncodeOptions | None
    debug: bool
    progress: bool
    started: dict[Path, Future]  # reads begun before the batch (read_first), by source
    stats: BatchStats = dataclasses.field(default_factory=BatchStats)
    images: Any = None  # the images progress bar
    t_start: float = dataclasses.field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()  # the workers add their seconds to stats
        self.io = DeviceIO(self.runner.device) if self.runner.device.type == "cuda" else None

    def _timed(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            with self.lock:
                setattr(self.stats, what, getattr(self.stats, what) + time.perf_counter() - t0)

    def decode(self, job: Job) -> Prepared:
        """On a reader thread: the file read (or the read begun before, taken), resized and
        (on a GPU) on its way up."""
        early, source = self.started.pop(job.src, None), None
        if early is not None:
            seconds, source = early.result()
            with self.lock:
                self.stats.decode_s += seconds
        return self._timed("decode_s", prepare, job, self.scale, self.max_pixels, self.io, source)

    def write(self, job: Job, prepared: Prepared, out: Pending) -> None:
        """On a writer thread: the output encoded and written."""
        self._timed("encode_s", write_result, job, prepared, out, self.encode)

    def run_one(self, pipe: OrderedPipeline[Job, Prepared], job: Job, fut: Future) -> None:
        """The model on one image (this thread), its result handed to the writers; a failure
        counts and the batch goes on (``debug``: it is raised)."""
        from tqdm.auto import tqdm

        try:
            prepared = fut.result()
            del fut
            _, h, w = prepared.x.shape
            windows = planned_windows(self.runner, h, w, self.cfg)
            with tqdm(total=windows, desc=job.src.name, unit="tile", leave=False, disable=not self.progress) as bar:
                t0 = time.perf_counter()
                try:
                    x = prepared.x if self.io is None or prepared.upload is None else self.io.ready(prepared.upload)
                    out, report = upscale_tensor(self.runner, x, self.cfg, progress=bar.update)
                    result = fetch_result(job, prepared, out, self.io)  # on its way to the host
                    del x, out
                finally:
                    self.stats.model_s += time.perf_counter() - t0
        except Exception as exc:  # one bad file must not stop a batch
            if self.debug:
                raise
            pipe.failed(job, exc)
            return
        # the write needs the output, alpha and format, not the input
        slim = dataclasses.replace(prepared, x=prepared.x.new_empty(0), upload=None)
        del prepared
        pipe.write(job, self.write, job, slim, result, info=(w, h, report))

    def report(self, outcome: Outcome[Job]) -> None:
        """Log and count one outcome, in job order."""
        job = outcome.job
        error: BaseException | None = outcome.error
        if outcome.future is not None:
            error = outcome.future.exception()
            if error is not None and self.debug:
                raise error
        if outcome.skip:
            log.info("skip %s: %s exists (use --overwrite)", job.src, job.dst)
            self.stats.skipped += 1
        elif error is not None:
            _log_failure(job, error)
            self.stats.failed += 1
        else:
            w, h, tile_report = outcome.info
            log.info("%s -> %s (%dx%d): %s", job.src, job.dst, w, h, tile_report.summary())
            self.stats.done += 1
            self.stats.overflows += tile_report.overflows
        self.images.update(1)
