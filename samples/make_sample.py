"""Rebuild the bundled sample (mcan_deploy/samples/city100) from the full City100 Nikon pairs.

Usage: python samples/make_sample.py ../shared/data/city100_nikon mcan_deploy/samples/city100

(samples/city100 is a link to it: the package ships the sample, so `--data sample` works from an
installed wheel.) With ``--crop 512 --train 40 --test 5`` it cuts every Nikon pair instead: 36 MB,
small enough to travel to a GPU machine with the checkout (carried as an ignored path, e.g.
``.gpu-data/city100``, for ``DATA=.gpu-data/city100 bash benchmarks/gpu_train_paper.sh``), where
``../shared`` does not.

Takes one crop per pair (the most textured window of the HR image, where the camera's blur
matters most) from the first few training and test scenes, keeping LR and HR aligned.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

CROP = 192
N_TRAIN, N_TEST = 12, 3


def best_window(hr: np.ndarray, size: int) -> tuple[int, int]:
    gray = cv2.cvtColor(hr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    energy = np.abs(cv2.Laplacian(gray, cv2.CV_32F))
    box = cv2.boxFilter(energy, -1, (size, size), normalize=True)
    half = size // 2
    inner = box[half : hr.shape[0] - half, half : hr.shape[1] - half]
    y, x = np.unravel_index(np.argmax(inner), inner.shape)
    return int(y), int(x)


def main(src: Path, dst: Path, crop: int = CROP, n_train: int = N_TRAIN, n_test: int = N_TEST) -> None:
    for split, count in (("train", n_train), ("test", n_test)):
        names = sorted(p.name for p in (src / split / "HR").iterdir())[:count]
        for sub in ("HR", "LR"):
            (dst / split / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            hr = cv2.imread(str(src / split / "HR" / name), cv2.IMREAD_UNCHANGED)
            lr = cv2.imread(str(src / split / "LR" / name), cv2.IMREAD_UNCHANGED)
            y, x = best_window(hr, crop)
            for sub, img in (("HR", hr), ("LR", lr)):
                cv2.imwrite(
                    str(dst / split / sub / name), img[y : y + crop, x : x + crop], [cv2.IMWRITE_PNG_COMPRESSION, 9]
                )
    shutil.copy(src / "LICENSE", dst / "LICENSE")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="City100 folder with train/ and test/ (HR/ and LR/ each)")
    p.add_argument("dst", type=Path)
    p.add_argument("--crop", type=int, default=CROP, help=f"window side in pixels (default {CROP})")
    p.add_argument("--train", type=int, default=N_TRAIN, help=f"training scenes, in name order (default {N_TRAIN})")
    p.add_argument("--test", type=int, default=N_TEST, help=f"test scenes, in name order (default {N_TEST})")
    a = p.parse_args()
    main(a.src, a.dst, a.crop, a.train, a.test)
