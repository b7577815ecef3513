"""Helpers shared by the tests: paths of the bundled data and tiny plans that train in seconds."""

from __future__ import annotations

import copy
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcan_deploy.config import Plan, plan_from_dict

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "city100"

TINY_MODEL = {"n_blocks": 2, "n_resblocks": 1, "n_feats": 8, "reduction": 4}


def tiny_plan_dict(**sections: Any) -> dict[str, Any]:
    """A two-block phased plan (1-1 adadelta+adam, 1-2, 2-1 inherit, joint) that runs in seconds."""
    plan = {
        "model": dict(TINY_MODEL),
        "data": {"patch_size": 24, "batch_size": 4},
        "train": {"seed": 0, "log_every": 2, "val_every": 4, "checkpoint_every": 3, "strip_size": 64},
        "phases": [
            {
                "name": "1-1",
                "kind": "train_block",
                "block": 1,
                "init": "orthogonal",
                "stages": [
                    {
                        "name": "adadelta",
                        "optimizer": "adadelta",
                        "iters": [4],
                        "lr": [1.0],
                        "rho": 0.9,
                        "eps": 1e-6,
                        "clamp": False,
                    },
                    {"name": "adam", "optimizer": "adam", "iters": [3, 2], "lr": [1e-4, 1e-5], "clamp": True},
                ],
            },
            {"name": "1-2", "kind": "generate", "block": 1},
            {
                "name": "2-1",
                "kind": "train_block",
                "block": 2,
                "init": "inherit",
                "stages": [
                    {"name": "adam", "optimizer": "adam", "iters": [4], "lr": [1e-4], "clamp": True},
                ],
            },
            {
                "name": "4",
                "kind": "train_joint",
                "stages": [
                    {"name": "adam", "optimizer": "adam", "iters": [3], "lr": [1e-5], "clamp": True},
                ],
            },
        ],
    }
    for key, value in sections.items():
        plan[key] = value
    return copy.deepcopy(plan)


def tiny_plan(**sections: Any) -> Plan:
    return plan_from_dict(tiny_plan_dict(**sections), "<tiny plan>")


def cli_here(main: Any, argv: list[str], capsys: Any) -> tuple[int, str, str]:
    """A command's ``main(argv)`` in this process (a subprocess costs seconds of imports):
    (exit code, stdout, stderr). The command's stop handlers (SIGINT, SIGTERM) are undone after,
    and an unexpected exception would show as its one-line 'unexpected' error, which fails here."""
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = main(list(argv))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out, err = capsys.readouterr()
    assert "unexpected" not in err and "Traceback" not in err, err
    return rc, out, err


SHARED_DATA = REPO.parent / "shared" / "data" / "city100_nikon"


def once_per_run(tmp_path_factory: Any, name: str, build: Callable[[Path], object], threads: int | None = None) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once per test run and shared by the
    pytest-xdist workers: a module fixture otherwise runs once in every worker that takes one of
    its module's tests (the recipe of pytest-xdist's docs: the workers' common base folder and
    a file lock). ``threads``: torch's thread count for ``build`` (a module fixture is set up
    before conftest's per-test one sets it, and a reference must compute as its tests do)."""
    import torch
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's, not older runs'
    folder = root / f"once-{name}"
    with FileLock(f"{folder}.lock"):
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            n = torch.get_num_threads()
            torch.set_num_threads(threads or n)
            try:
                build(folder)
            finally:
                torch.set_num_threads(n)
            (folder / ".done").touch()
    return folder


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(type, data, the whole chunk) of every chunk of a PNG file, read by hand from the PNG
    spec (sec. 5.3: length, type, data, CRC), each CRC checked: the tests' own reader."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body, data[pos : pos + 12 + length]))
        pos += 12 + length
    return out
