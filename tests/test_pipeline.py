"""Pipelined folders (``upscale_jobs``, ``mcan-upscale --prefetch``): the same files, errors, counts
and log order as one image after another, a bounded number of images in flight, and clean stops."""

from __future__ import annotations

import logging
import re
import threading
import time

import cv2
import numpy as np
import pytest
import torch

import mcan_deploy.upscale.batch as upscale_mod
from mcan_deploy.checkpoint import save_model
from mcan_deploy.cli.upscale import main
from mcan_deploy.errors import ImageReadError, MCANError
from mcan_deploy.model import ModelConfig, build_model
from mcan_deploy.runners import TorchRunner
from mcan_deploy.tiling import TileConfig
from mcan_deploy.upscale import Job, plan_jobs, upscale_file, upscale_jobs

CFG = TileConfig(tile=24)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=2, n_resblocks=1, n_feats=8))
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, model)
    return path, model


@pytest.fixture
def runner(model_file):
    return TorchRunner(model_file[1], torch.device("cpu"))


def rgb8(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def small_folder(root, n: int):
    """``n`` PNGs of different sizes and contents, named 0.png, 1.png, ..."""
    root.mkdir()
    for i in range(n):
        cv2.imwrite(str(root / f"{i}.png"), rgb8(14 + i, 20 + 2 * i, i))
    return root


def worker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("mcan-decode", "mcan-write"))]


def messages(caplog, out) -> list[tuple[str, str]]:
    """The per-image log lines in order, with the output folder, timings and the memory budget
    (a share of the RAM available at that moment) made comparable."""
    got = []
    for r in caplog.records:
        if r.name == "mcan_deploy.upscale":
            msg = re.sub(r"\d+\.\d+ s\b", "T s", r.getMessage().replace(str(out), "OUT"))
            msg = re.sub(r"of a \d+\.\d+ GB budget", "of a B GB budget", msg)
            got.append((r.levelname, msg))
    caplog.clear()
    return got


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_folder_with_bad_files_gives_the_same_files_errors_and_counts_for_every_prefetch(
    model_file, tmp_path, capsys, caplog
):
    """Catches any difference between the pipelined and the sequential run: an output written
    differently or to the wrong name, a skip or error lost, counted twice or attributed to the
    wrong file, an exit code, or log lines out of job order."""
    caplog.set_level(logging.INFO, logger="mcan_deploy.upscale")
    path, model = model_file
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), rgb8(23, 31, 1))
    cv2.imwrite(str(src / "b.png"), np.random.default_rng(2).integers(0, 65536, (17, 40), dtype=np.uint16))
    cv2.imwrite(str(src / "c.png"), np.dstack([rgb8(30, 19, 3), np.full((30, 19), 77, np.uint8)]))
    cv2.imwrite(str(src / "d.jpg"), rgb8(25, 25, 4))
    cv2.imwrite(str(src / "e.png"), rgb8(12, 50, 5))
    cv2.imwrite(str(src / "existing.png"), rgb8(20, 20, 6))
    good = cv2.imencode(".png", rgb8(20, 20, 7))[1].tobytes()
    (src / "corrupt.png").write_bytes(good[: len(good) // 2])
    (src / "text.png").write_bytes(b"this is not an image\n")
    cv2.imwrite(str(src / "huge.png"), rgb8(60, 60, 8))  # 3600 px, above --max-pixels 2000
    results = {}
    for prefetch in (0, 2, 3):
        out = tmp_path / f"out{prefetch}"
        out.mkdir()
        (out / "existing.png").write_bytes(b"kept as it was")
        rc = main(
            [
                str(path),
                str(src),
                "-o",
                str(out),
                "--no-progress",
                "--tile",
                "24",
                "--backend",
                "torch",
                "--max-pixels",
                "2000",
                "--prefetch",
                str(prefetch),
            ]
        )
        counts = capsys.readouterr().out
        counts = re.sub(r" in \d+\.\d+ s -> .*", "", counts.strip())
        results[prefetch] = rc, counts, files(out), messages(caplog, out)
    rc, counts, written, lines = results[0]
    assert rc == 1 and counts == "mcan-upscale: 5 written, 1 skipped, 3 failed"
    assert sorted(written) == ["a.png", "b.png", "c.png", "d.jpg", "e.png", "existing.png"]
    assert written["existing.png"] == b"kept as it was"
    errors = [msg for level, msg in lines if level == "ERROR"]
    assert len(errors) == 3 and [e.split(":")[0].rsplit("/", 1)[-1] for e in errors] == [
        "corrupt.png",
        "huge.png",
        "text.png",
    ], errors
    assert sum(msg.startswith("skip ") for _, msg in lines) == 1
    for prefetch in (2, 3):
        assert results[prefetch][0] == rc and results[prefetch][1] == counts
        assert results[prefetch][2] == written, f"--prefetch {prefetch} wrote other bytes"
        assert results[prefetch][3] == lines, f"--prefetch {prefetch} logged other lines or another order"
    # and the sequential path is the one-file primitive, file by file
    ref = tmp_path / "ref"
    runner = TorchRunner(model, torch.device("cpu"))
    for job in plan_jobs([src / n for n in ("a.png", "b.png", "c.png", "d.jpg", "e.png")], ref):
        upscale_file(runner, job, CFG, max_pixels=2000)
    assert {k: v for k, v in written.items() if k != "existing.png"} == files(ref)
    assert worker_threads() == []


@pytest.mark.parametrize("prefetch, slow", [(1, "model"), (2, "model"), (2, "write"), (3, "write")])
def test_images_in_flight_stay_within_two_prefetch_plus_one(runner, tmp_path, monkeypatch, prefetch, slow):
    """Counts the images decoded but not yet written. Catches a pipeline that decodes every image
    up front (a slow model lets 10 pile up), one whose write queue has no bound (a slow writer),
    and, with the lower bound, one that does not overlap at all."""
    src = small_folder(tmp_path / "src", 10)
    jobs = plan_jobs([src], tmp_path / "out")
    lock = threading.Lock()
    live = peak = 0
    real_prepare, real_write, real_model = upscale_mod.prepare, upscale_mod.write_result, upscale_mod.upscale_tensor

    def prepare(*a, **k):
        nonlocal live, peak
        p = real_prepare(*a, **k)
        with lock:
            live += 1
            peak = max(peak, live)
        return p

    def write_result(*a, **k):
        nonlocal live
        if slow == "write":
            time.sleep(0.04)
        real_write(*a, **k)
        with lock:
            live -= 1

    def model(*a, **k):
        if slow == "model":
            time.sleep(0.04)
        return real_model(*a, **k)

    monkeypatch.setattr(upscale_mod, "prepare", prepare)
    monkeypatch.setattr(upscale_mod, "write_result", write_result)
    monkeypatch.setattr(upscale_mod, "upscale_tensor", model)
    stats = upscale_jobs(runner, jobs, CFG, prefetch=prefetch, progress=False)
    assert (stats.done, stats.skipped, stats.failed) == (10, 0, 0) and live == 0
    assert len(list((tmp_path / "out").iterdir())) == 10
    assert peak <= 2 * prefetch + 1, f"{peak} images in flight with prefetch {prefetch}"
    assert peak >= prefetch + 1, f"only {peak} images in flight: nothing overlapped the slow {slow}"
    assert worker_threads() == []


def test_prefetch_0_runs_everything_on_the_calling_thread(runner, tmp_path, monkeypatch):
    """Catches threads (or decoding ahead) in the sequential mode: each image is read, run and
    written before the next is read."""
    src = small_folder(tmp_path / "src", 4)
    events = []
    real_prepare, real_write = upscale_mod.prepare, upscale_mod.write_result

    def prepare(job, *a, **k):
        events.append(("read", job.src.name, threading.current_thread() is threading.main_thread()))
        return real_prepare(job, *a, **k)

    def write_result(job, *a, **k):
        events.append(("write", job.src.name, threading.current_thread() is threading.main_thread()))
        return real_write(job, *a, **k)

    monkeypatch.setattr(upscale_mod, "prepare", prepare)
    monkeypatch.setattr(upscale_mod, "write_result", write_result)
    before = threading.active_count()
    stats = upscale_jobs(runner, plan_jobs([src], tmp_path / "out"), CFG, prefetch=0, progress=False)
    assert stats.done == 4 and threading.active_count() == before
    assert events == [(kind, f"{i}.png", True) for i in range(4) for kind in ("read", "write")]
    assert stats.decode_s > 0 and stats.model_s > 0 and stats.encode_s > 0
    assert stats.wall_s >= stats.decode_s + stats.model_s + stats.encode_s


def test_a_slow_first_write_changes_no_file_and_no_log_order(runner, tmp_path, monkeypatch, caplog):
    """The first image's write finishes last. Catches results paired with jobs by finishing order
    (or a write that reads the loop's current job late): files would swap contents or sizes;
    and logs that follow finishing order instead of job order."""
    caplog.set_level(logging.INFO, logger="mcan_deploy.upscale")
    src = small_folder(tmp_path / "src", 5)
    seq = tmp_path / "seq"
    upscale_jobs(runner, plan_jobs([src], seq), CFG, prefetch=0, progress=False)
    caplog.clear()
    finished = []
    real_write = upscale_mod.write_result

    def write_result(job, *a, **k):
        if job.src.name == "0.png":
            time.sleep(0.3)
        real_write(job, *a, **k)
        finished.append(job.src.name)

    monkeypatch.setattr(upscale_mod, "write_result", write_result)
    out = tmp_path / "out"
    stats = upscale_jobs(runner, plan_jobs([src], out), CFG, prefetch=2, progress=False)
    assert stats.done == 5
    assert finished[0] != "0.png", "the test needs a later write to finish first"
    assert files(out) == files(seq)
    logged = [
        r.getMessage().split(" -> ")[0].rsplit("/", 1)[-1] for r in caplog.records if r.name == "mcan_deploy.upscale"
    ]
    assert logged == [f"{i}.png" for i in range(5)]


@pytest.mark.parametrize("prefetch", ["0", "2"])
def test_debug_reraises_and_errors_in_the_writer_are_counted(model_file, tmp_path, monkeypatch, capsys, prefetch):
    """Catches a pipeline that swallows errors under --debug, loses an error raised on a writer
    thread (or stops the batch at it), or leaves worker threads behind."""
    path, _ = model_file
    src = small_folder(tmp_path / "src", 4)
    args = [
        str(path),
        str(src),
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
        "--tile",
        "24",
        "--backend",
        "torch",
        "--prefetch",
        prefetch,
        "--overwrite",
    ]
    (src / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageReadError, match="1.png"):
        main([*args, "--debug"])
    assert worker_threads() == []
    (src / "1.png").unlink()
    real_write = upscale_mod.write_result

    def write_result(job, *a, **k):
        if job.src.name == "2.png":
            raise RuntimeError("disk on fire\nsecond line")
        real_write(job, *a, **k)

    monkeypatch.setattr(upscale_mod, "write_result", write_result)
    assert main(args) == 1
    cap = capsys.readouterr()
    assert "2.png: unexpected RuntimeError: disk on fire (--debug for the traceback)" in cap.err
    assert "second line" not in cap.err and "2 written, 0 skipped, 1 failed" in cap.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "3.png"]
    with pytest.raises(RuntimeError, match="disk on fire"):
        main([*args, "--debug"])
    assert worker_threads() == []


def test_interrupt_stops_the_pipeline_cleanly(runner, tmp_path, monkeypatch):
    """Ctrl-C at the third image: catches pools left running (threads alive, more images read
    after the interrupt) and half-written files."""
    src = small_folder(tmp_path / "src", 10)
    reads = []
    real_prepare, real_write, real_model = upscale_mod.prepare, upscale_mod.write_result, upscale_mod.upscale_tensor

    def prepare(job, *a, **k):
        reads.append(job.src.name)
        return real_prepare(job, *a, **k)

    def write_result(*a, **k):
        time.sleep(0.05)
        real_write(*a, **k)

    def model(*a, **k):
        if model.calls == 2:
            raise KeyboardInterrupt
        model.calls += 1
        return real_model(*a, **k)

    model.calls = 0
    monkeypatch.setattr(upscale_mod, "prepare", prepare)
    monkeypatch.setattr(upscale_mod, "write_result", write_result)
    monkeypatch.setattr(upscale_mod, "upscale_tensor", model)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        upscale_jobs(runner, plan_jobs([src], out), CFG, prefetch=2, progress=False)
    assert worker_threads() == []
    n_reads = len(reads)
    time.sleep(0.1)
    assert len(reads) == n_reads <= 5, reads
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert set(written) <= {"0.png", "1.png"}, written  # no temporary files, nothing past the interrupt
    for name in written:
        assert cv2.imread(str(out / name)) is not None


def test_negative_prefetch_is_a_one_line_error(model_file, tmp_path, capsys):
    path, _ = model_file
    cv2.imwrite(str(tmp_path / "x.png"), rgb8(4, 4, 0))
    rc = main([str(path), str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--prefetch", "-1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.strip().count("\n") == 0 and "--prefetch -1: must be >= 0" in err
    with pytest.raises(MCANError, match="prefetch = -1"):
        upscale_jobs(None, [Job(tmp_path / "x.png", tmp_path / "o.png")], prefetch=-1)  # type: ignore[arg-type]


def test_default_prefetch_is_off_only_for_pytorch_on_a_cpu():
    """Measured: pipelining slowed PyTorch on a 2-core CPU (its OpenMP threads wait for the core
    the file work takes) and sped OpenVINO up; on a GPU it is the point."""
    cpu = TorchRunner(build_model(ModelConfig(n_blocks=1, n_resblocks=1, n_feats=4)), torch.device("cpu"))
    assert upscale_mod.default_prefetch(cpu) == 0

    class OnGpu:
        device = torch.device("cuda")

    class OpenVINOLike:
        device = torch.device("cpu")

    assert upscale_mod.default_prefetch(OnGpu()) == 2 and upscale_mod.default_prefetch(OpenVINOLike()) == 2


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_read_begun_before_the_batch_is_taken_not_read_again(runner, tmp_path, monkeypatch, prefetch):
    """``read_first`` reads the first file not to be skipped while the model loads; the batch
    takes that read (each file is read once), writes the same files as without it, and counts
    the early read's seconds as decode time."""
    from mcan_deploy.upscale import files as files_mod
    from mcan_deploy.upscale import read_first

    src = small_folder(tmp_path / "in", 3)
    plain = upscale_jobs(runner, plan_jobs([src], tmp_path / "plain"), CFG, prefetch=prefetch, progress=False)
    reads: list[str] = []
    real = files_mod.read_photo_array
    monkeypatch.setattr(files_mod, "read_photo_array", lambda path, *a: reads.append(path.name) or real(path, *a))
    out = tmp_path / "early"
    out.mkdir()
    (out / "0.png").write_bytes(b"kept")  # skipped without --overwrite: the first to read is 1.png
    jobs = plan_jobs([src], out)
    with read_first(jobs) as started:
        assert list(started) == [src / "1.png"]
        seconds, _ = started[src / "1.png"].result()
        assert reads == ["1.png"]
        stats = upscale_jobs(runner, jobs, CFG, prefetch=prefetch, progress=False, started=started)
    assert sorted(reads) == ["1.png", "2.png"], "1.png read once, before the batch"
    assert stats.done == 2 and stats.skipped == 1 and stats.decode_s >= seconds
    assert files(out) == {**files(tmp_path / "plain"), "0.png": b"kept"}
    assert plain.done == 3
    with read_first(jobs[:1]) as none:
        assert none == {}, "nothing to read where every job is skipped"


def test_mcan_upscale_reads_the_first_photo_while_the_model_loads(model_file, tmp_path, monkeypatch, capsys):
    """The model's load waits here until the first file's read has begun: without the read
    ahead the run would stop at the wait's time limit; and the batch takes that read (every
    file is read once). A bad first file is still reported by name and the batch goes on."""
    import mcan_deploy.api as api
    from mcan_deploy.upscale import files as files_mod

    path, _ = model_file
    src = small_folder(tmp_path / "in", 2)
    reads: list[str] = []
    real_array = files_mod.read_photo_array
    monkeypatch.setattr(files_mod, "read_photo_array", lambda p, *a: reads.append(p.name) or real_array(p, *a))
    reading = threading.Event()
    real_read = upscale_mod.read_source
    monkeypatch.setattr(upscale_mod, "read_source", lambda *a: reading.set() or real_read(*a))
    real_load = api.load

    def load(*args, **kw):
        assert reading.wait(20), "the first read did not begin while the model loaded"
        return real_load(*args, **kw)

    monkeypatch.setattr(api, "load", load)
    assert main([str(path), str(src), "-o", str(tmp_path / "out"), "--backend", "torch", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png"]
    assert sorted(reads) == ["0.png", "1.png"]
    (src / "0.png").write_bytes(b"not a png")
    reading.clear()
    args = [str(path), str(src), "-o", str(tmp_path / "bad"), "--backend", "torch", "--no-progress"]
    assert main(args) == 1
    assert "0.png" in capsys.readouterr().err and (tmp_path / "bad" / "1.png").exists()
