"""Paired real LR/HR data: discovery, loading, LR pre-upsampling, patch sampling, augmentation.

Two layouts are understood:
- ``HR/`` and ``LR/`` folders holding files of the same names (City100, RealSR v1/v2 exports);
- RealSR v3 naming, ``Canon_001_HR.png`` beside ``Canon_001_LR2.png`` (searched recursively).

The LR image is the network's input at the HR size: an LR file smaller than its HR by an integer
factor is upsampled bicubically first. The whole set is held in memory (on the training device),
so sampling a batch never waits on disk.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .io import IMAGE_SUFFIXES, list_images, read_image

log = logging.getLogger(__name__)

_V3_HR = re.compile(r"^(?P<stem>.+)_HR$", re.IGNORECASE)
_V3_LR = re.compile(r"^(?P<stem>.+)_LR(?P<scale>\d*)$", re.IGNORECASE)
_SPLITS = {"train": ("train", "training"), "test": ("test", "testing", "val", "valid", "validation")}


@dataclass(frozen=True)
class Pair:
    """One LR/HR file pair."""

    name: str
    lr: Path
    hr: Path


def _child(folder: Path, names: tuple[str, ...]) -> Path | None:
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        if child.is_dir() and child.name.lower() in names:
            return child
    return None


def find_pairs(root: str | Path) -> list[Pair]:
    """All LR/HR pairs under ``root`` in either layout; ``DataError`` if there are none or an
    HR file has no LR partner."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a folder with HR/ and LR/ or RealSR *_HR/*_LR files")
    hr_dir, lr_dir = _child(root, ("hr",)), _child(root, ("lr",))
    if hr_dir and lr_dir:
        pairs = []
        lr_by_stem = {p.stem: p for p in list_images(lr_dir)}
        for hr in list_images(hr_dir):
            lr = lr_by_stem.get(hr.stem)
            if lr is None:
                raise DataError(f"{hr}: no LR partner named {hr.stem}.* in {lr_dir}")
            pairs.append(Pair(hr.stem, lr, hr))
    else:
        pairs = _find_v3_pairs(root)
    if not pairs:
        raise DataError(
            f"{root}: no image pairs found; expected HR/ and LR/ folders with the same file "
            "names, or RealSR v3 files such as Canon_001_HR.png beside Canon_001_LR2.png"
        )
    return pairs


def _find_v3_pairs(root: Path) -> list[Pair]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    lrs: dict[tuple[Path, str], Path] = {}
    for p in files:
        m = _V3_LR.match(p.stem)
        if m:
            lrs[(p.parent, m["stem"])] = p
    pairs = []
    for p in files:
        m = _V3_HR.match(p.stem)
        if not m:
            continue
        lr = lrs.get((p.parent, m["stem"]))
        if lr is None:
            raise DataError(f"{p}: no LR partner named {m['stem']}_LR*.* beside it")
        pairs.append(Pair(str(p.relative_to(root).with_name(m["stem"])), lr, p))
    return pairs


def split_dirs(data_root: str | Path) -> tuple[Path, Path]:
    """The training and test folders of a dataset root (``train/`` and ``test/``, any case;
    ``val/`` and ``valid/`` are accepted for the test side)."""
    data_root = Path(data_root)
    train, test = _child(data_root, _SPLITS["train"]), _child(data_root, _SPLITS["test"])
    if train is None or test is None:
        raise DataError(
            f"{data_root}: expected a train/ and a test/ folder inside (found "
            f"{sorted(p.name for p in data_root.iterdir()) if data_root.is_dir() else 'no folder'})"
        )
    return train, test


def upsample_factor(lr_size: tuple[int, int], hr_size: tuple[int, int], pair: Pair) -> int:
    """The integer scale s with HR = s * LR on both sides; ``DataError`` naming both files if none."""
    (lh, lw), (hh, hw) = lr_size, hr_size
    if lh and lw and hh % lh == 0 and hw % lw == 0 and hh // lh == hw // lw:
        return hh // lh
    raise DataError(
        f"{pair.lr} ({lw}x{lh}) and {pair.hr} ({hw}x{hh}): sizes do not differ by one integer "
        "scale; crop or resize the pair so that HR = scale x LR on both sides"
    )


def load_pair(pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) as float32 (3, H, W) tensors at the HR size, LR upsampled bicubically if needed."""
    import cv2

    lr_img, hr_img = read_image(pair.lr), read_image(pair.hr)
    scale = upsample_factor(lr_img.size, hr_img.size, pair)
    lr = lr_img.rgb
    if scale > 1:
        h, w = hr_img.size
        lr = np.clip(cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # noqa: E731
    return to_t(lr), to_t(hr_img.rgb)


def center_crop(img: torch.Tensor, max_size: int) -> torch.Tensor:
    """Centre crop of (..., H, W) to at most ``max_size`` on each side (the report validates on
    images no larger than 1500x1500)."""
    h, w = img.shape[-2:]
    ch, cw = min(h, max_size), min(w, max_size)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[..., top : top + ch, left : left + cw]


@dataclass
class PairedImages:
    """A set of same-size (input, target) images held in memory on one device.

    ``inputs`` starts as the LR images and is replaced by LR_i after each generate phase; the
    targets are always HR.
    """

    names: list[str]
    inputs: list[torch.Tensor]  # (3, H, W) float32
    targets: list[torch.Tensor]  # (3, H, W) float32

    def __len__(self) -> int:
        return len(self.names)

    def to(self, device: torch.device | str) -> PairedImages:
        return PairedImages(self.names, [t.to(device) for t in self.inputs],
                            [t.to(device) for t in self.targets])

    def with_inputs(self, inputs: list[torch.Tensor]) -> PairedImages:
        return PairedImages(self.names, inputs, self.targets)


def load_images(root: str | Path, max_size: int | None = None, progress: bool = True) -> PairedImages:
    """Load every pair under ``root`` (optionally centre-cropped to ``max_size``)."""
    from tqdm.auto import tqdm

    pairs = find_pairs(root)
    names, inputs, targets = [], [], []
    for pair in tqdm(pairs, desc=f"load {Path(root).name}", unit="img", disable=not progress, leave=False):
        lr, hr = load_pair(pair)
        if max_size:
            lr, hr = center_crop(lr, max_size), center_crop(hr, max_size)
        names.append(pair.name)
        inputs.append(lr)
        targets.append(hr)
    log.info("loaded %d pairs from %s (%.1f megapixels)", len(names), root,
             sum(t.shape[-1] * t.shape[-2] for t in targets) / 1e6)
    return PairedImages(names, inputs, targets)


def augment(x: torch.Tensor, rot: int, flip: bool) -> torch.Tensor:
    """Rotate (..., H, W) by ``rot`` x 90 degrees, then flip horizontally if ``flip``."""
    if rot:
        x = torch.rot90(x, rot, dims=(-2, -1))
    return x.flip(-1) if flip else x


class PatchSampler:
    """Random aligned LR/HR patch batches with the report's augmentation.

    Its randomness comes from its own ``torch.Generator``, whose state is saved in checkpoints so
    that a resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(self, data: PairedImages, patch_size: int, batch_size: int,
                 augment: bool = True, seed: int = 0) -> None:
        for name, img in zip(data.names, data.targets):
            h, w = img.shape[-2:]
            if h < patch_size or w < patch_size:
                raise DataError(
                    f"training image '{name}' is {w}x{h}, smaller than the {patch_size}x{patch_size} "
                    "patch; lower data.patch_size in the plan or drop the image"
                )
        self.data = data
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: (inputs, targets), each (batch, 3, patch, patch)."""
        g, p = self.generator, self.patch_size
        idx = torch.randint(len(self.data), (self.batch_size,), generator=g).tolist()
        u = torch.rand(self.batch_size, 2, generator=g).tolist()
        tf = torch.randint(8, (self.batch_size,), generator=g).tolist()
        xs, ys = [], []
        for i, (fy, fx), t in zip(idx, u, tf):
            x_img, y_img = self.data.inputs[i], self.data.targets[i]
            h, w = y_img.shape[-2:]
            top, left = int(fy * (h - p + 1)), int(fx * (w - p + 1))
            x = x_img[:, top : top + p, left : left + p]
            y = y_img[:, top : top + p, left : left + p]
            if self.augment:
                x, y = augment(x, t % 4, t >= 4), augment(y, t % 4, t >= 4)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
