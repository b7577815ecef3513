"""The package as a user installs it: a wheel in a fresh environment, away from this checkout.

The wheel must carry the plans and the sample; the commands and the Python API must work from it
alone, and the API's result must equal the CLI's file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from .helpers import REPO


def _run(cmd: list[str], cwd, env) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.mark.long
@pytest.mark.slow
def test_installed_wheel_trains_describes_and_upscales_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        tmp_path,
        env,
    )
    (wheel,) = (tmp_path / "dist").glob("mcan_deploy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "mcan_deploy/py.typed",
        "mcan_deploy/plans/demo.toml",
        "mcan_deploy/plans/paper.toml",
        "mcan_deploy/samples/city100/LICENSE",
        "mcan_deploy/samples/photo/city100_001_LR.png",
    } <= names
    assert any(n.startswith("mcan_deploy/samples/city100/train/HR/") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "configs/")) for n in names)

    # a fresh environment; its dependencies (torch is large) come from this one through a .pth
    # line, which adds that folder without running its .pth files (so no editable mcan_deploy)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    (tmp_path / site.stdout.strip()).joinpath("_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)], tmp_path, env)
    where = _run([str(py), "-c", "import mcan_deploy; print(mcan_deploy.__file__)"], tmp_path, env).stdout
    assert where.startswith(str(venv)), f"mcan_deploy imported from {where}, not the installed wheel"

    bin_ = venv / "bin"
    user = tmp_path / "user"  # a folder with nothing of the checkout in it
    user.mkdir()
    _run(
        [
            str(bin_ / "mcan-train"),
            "--config",
            "demo",
            "--data",
            "sample",
            "--out",
            "run",
            "--max-iters",
            "1",
            "--no-progress",
        ],
        user,
        env,
    )
    info = json.loads(_run([str(bin_ / "mcan-info"), "run/model.safetensors", "--json"], user, env).stdout)
    assert info["kind"] == "model" and info["config"]["n_blocks"] == 3 and len(info["sha256"]) == 64
    photo = _run(
        [str(py), "-c", "from mcan_deploy.resources import sample_photo; print(sample_photo())"], user, env
    ).stdout.strip()
    assert photo.startswith(str(venv))
    # the CLI and the API on a 200x160 crop of it (the whole 1218x870 photo costs ~8 s a run)
    import cv2

    crop = user / "crop.png"
    cv2.imwrite(str(crop), cv2.imread(photo, cv2.IMREAD_UNCHANGED)[:160, :200])
    _run(
        [
            str(bin_ / "mcan-upscale"),
            "run/model.safetensors",
            str(crop),
            "-o",
            "cli.png",
            "--backend",
            "torch",
            "--no-progress",
        ],
        user,
        env,
    )
    snippet = (
        "import cv2, numpy as np, mcan_deploy\n"
        f"model = mcan_deploy.load('run/model.safetensors', backend='torch')\n"
        f"out = model.upscale(cv2.imread({str(crop)!r}, cv2.IMREAD_UNCHANGED), channel_order='bgr')\n"
        "cli = cv2.imread('cli.png', cv2.IMREAD_UNCHANGED)\n"
        "assert out.shape == cli.shape and out.dtype == cli.dtype, (out.shape, cli.shape)\n"
        "assert np.array_equal(out, cli), np.abs(out.astype(int) - cli).max()\n"
        "print('equal')\n"
    )
    assert _run([str(py), "-c", snippet], user, env).stdout.strip() == "equal"
