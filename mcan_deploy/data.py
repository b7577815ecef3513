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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, ImageReadError
from .io import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, list_images, read_image

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


def _problem_report(root: Path, problems: list[str]) -> DataError:
    shown = problems[:50]
    more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
    return DataError(
        f"{root}: {len(problems)} problem{'s' * (len(problems) > 1)} with the image pairs "
        "(fix them all, then run again):\n  - " + "\n  - ".join(shown) + more
    )


def _by_key(files: list[Path], key, problems: list[str], what: str) -> dict:
    """Files by pairing key; two files with one key (001.png and 001.jpg) are a problem."""
    out: dict = {}
    for f in files:
        k = key(f)
        if k is None:
            continue
        if k in out:
            problems.append(f"{out[k]} and {f}: two {what} files for one pair; keep one")
        else:
            out[k] = f
    return out


def find_pairs(root: str | Path, problems: list[str] | None = None) -> list[Pair]:
    """All LR/HR pairs under ``root`` in either layout. Every problem (a file without a partner,
    two files for one pair) is collected and raised as one ``DataError``, or, given a
    ``problems`` list, appended to it (the good pairs are returned)."""
    collect = problems is not None
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a folder with HR/ and LR/ or RealSR *_HR/*_LR files")
    problems = problems if problems is not None else []
    hr_dir, lr_dir = _child(root, ("hr",)), _child(root, ("lr",))
    if hr_dir and lr_dir:
        hrs = _by_key(list_images(hr_dir), lambda p: p.stem, problems, "HR")
        lrs = _by_key(list_images(lr_dir), lambda p: p.stem, problems, "LR")
        problems += [f"{hrs[k]}: no LR partner named {k}.* in {lr_dir}" for k in sorted(set(hrs) - set(lrs))]
        problems += [f"{lrs[k]}: no HR partner named {k}.* in {hr_dir}" for k in sorted(set(lrs) - set(hrs))]
        pairs = [Pair(k, lrs[k], hrs[k]) for k in sorted(set(hrs) & set(lrs))]
    else:
        files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        v3_key = lambda rx: lambda p: (p.parent, m["stem"]) if (m := rx.match(p.stem)) else None  # noqa: E731
        hrs = _by_key(files, v3_key(_V3_HR), problems, "HR")
        lrs = _by_key(files, v3_key(_V3_LR), problems, "LR")
        problems += [f"{hrs[k]}: no LR partner named {k[1]}_LR*.* beside it" for k in sorted(set(hrs) - set(lrs))]
        problems += [f"{lrs[k]}: no HR partner named {k[1]}_HR.* beside it" for k in sorted(set(lrs) - set(hrs))]
        pairs = [
            Pair(str(hrs[k].relative_to(root).with_name(k[1])), lrs[k], hrs[k]) for k in sorted(set(hrs) & set(lrs))
        ]
    if problems and not collect:
        raise _problem_report(root, problems)
    if not pairs and not problems:
        raise DataError(
            f"{root}: no image pairs found; expected HR/ and LR/ folders with the same file "
            "names, or RealSR v3 files such as Canon_001_HR.png beside Canon_001_LR2.png"
        )
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


def load_pair(pair: Pair, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) as float32 (3, H, W) tensors at the HR size, LR upsampled bicubically if needed.
    LR and HR must have the same colour kind (both gray or both colour, alpha on both or none)."""
    import cv2

    lr_img, hr_img = read_image(pair.lr, max_pixels), read_image(pair.hr, max_pixels)
    kind = lambda im: ("gray" if im.gray else "colour") + (" + alpha" if im.alpha is not None else "")  # noqa: E731
    if kind(lr_img) != kind(hr_img):
        raise DataError(
            f"{pair.lr} ({kind(lr_img)}) and {pair.hr} ({kind(hr_img)}): channel counts differ; "
            "export both with the same channels"
        )
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
    # which folder (camera) each pair comes from, when several are trained on together
    groups: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.groups:
            self.groups = [0] * len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def to(self, device: torch.device | str) -> PairedImages:
        return PairedImages(
            self.names, [t.to(device) for t in self.inputs], [t.to(device) for t in self.targets], self.groups
        )

    def with_inputs(self, inputs: list[torch.Tensor]) -> PairedImages:
        return PairedImages(self.names, inputs, self.targets, self.groups)

    @staticmethod
    def join(parts: list[PairedImages]) -> PairedImages:
        """One set of several folders' pairs; ``groups`` says which folder each came from."""
        return PairedImages(
            [n for p in parts for n in p.names],
            [t for p in parts for t in p.inputs],
            [t for p in parts for t in p.targets],
            [g for g, p in enumerate(parts) for _ in p.names],
        )


def load_images(
    root: str | Path, max_size: int | None = None, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> PairedImages:
    """Load every pair under ``root`` (optionally centre-cropped to ``max_size``). A bad pair
    (unreadable file, sizes or channels that do not match) does not stop the loading: all of
    them are named in one ``DataError`` at the end."""
    from tqdm.auto import tqdm

    problems: list[str] = []
    pairs = find_pairs(root, problems)  # pairing problems join the loading problems in one report
    names, inputs, targets = [], [], []
    for pair in tqdm(pairs, desc=f"load {Path(root).name}", unit="img", disable=not progress, leave=False):
        try:
            lr, hr = load_pair(pair, max_pixels)
        except (DataError, ImageReadError) as exc:
            problems.append(str(exc))
            continue
        if max_size:
            lr, hr = center_crop(lr, max_size), center_crop(hr, max_size)
        names.append(pair.name)
        inputs.append(lr)
        targets.append(hr)
    if problems:
        raise _problem_report(Path(root), problems)
    log.info(
        "loaded %d pairs from %s (%.1f megapixels)",
        len(names),
        root,
        sum(t.shape[-1] * t.shape[-2] for t in targets) / 1e6,
    )
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

    def __init__(
        self,
        data: PairedImages,
        patch_size: int,
        batch_size: int,
        augment: bool = True,
        seed: int = 0,
        mix: list[float] | None = None,
    ) -> None:
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
        n_groups = max(data.groups) + 1 if data.groups else 1
        weights = mix if mix else [1.0] * n_groups
        if len(weights) != n_groups or min(weights) < 0 or sum(weights) <= 0:
            raise DataError(f"data.mix = {mix}: give one weight >= 0 per data folder ({n_groups}), not all 0")
        self.members = [[i for i, g in enumerate(data.groups) if g == k] for k in range(n_groups)]
        empty = [k for k, m in enumerate(self.members) if not m and weights[k] > 0]
        if empty:
            raise DataError(f"data folder {empty[0] + 1} has no training pairs but a share of the batches")
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def _indices(self) -> list[int]:
        """The pairs of one batch: uniform over all pairs from one folder (the draws of earlier
        versions, so single-folder runs are unchanged); from several, first the folder by the
        mix weights (equal by default, whatever each folder's size), then a pair within it."""
        g = self.generator
        if len(self.members) == 1:
            return torch.randint(len(self.data), (self.batch_size,), generator=g).tolist()
        folders = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g).tolist()
        picks = torch.rand(self.batch_size, generator=g, dtype=torch.float64).tolist()
        return [self.members[f][int(u * len(self.members[f]))] for f, u in zip(folders, picks)]

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: (inputs, targets), each (batch, 3, patch, patch)."""
        g, p = self.generator, self.patch_size
        idx = self._indices()
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
