"""Images as callers hold them, to and from the engine's (3, H, W) float32 in [0, 1].

Accepted, and returned in the same kind, shape, dtype and channel order:

- numpy arrays (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4), uint8, uint16, float32 or
  float64 (floats in [0, 1]); colours are RGB(A) unless ``channel_order="bgr"`` (what
  ``cv2.imread`` gives). Gray comes back gray (the mean of the restored colours), alpha unchanged.
  Integer results are rounded exactly as ``mcan-upscale`` writes files, so the pixels equal the
  CLI's output for the same input;
- PIL images (modes L, LA, I;16, RGB, RGBA; other modes are converted to RGB or RGBA first);
- torch tensors (C, H, W) or (N, C, H, W), C = 1, 3 or 4 (RGB order), floating point in [0, 1],
  on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .errors import MCANError
from .io import LoadedImage, decode_array, encode_array

if TYPE_CHECKING:
    from .device_io import DeviceIO

ChannelOrder = Literal["rgb", "bgr"]
Restore = Callable[[np.ndarray], np.ndarray]  # the engine's RGB float32 (H, W, 3) -> the caller's array


def from_numpy(arr: np.ndarray, order: ChannelOrder = "rgb") -> tuple[LoadedImage, Restore]:
    """The image and how to turn a restored RGB (H, W, 3) float32 back into ``arr``'s kind."""
    if order not in ("rgb", "bgr"):
        raise MCANError(f"channel_order = {order!r}: choose 'rgb' (PIL, scikit-image) or 'bgr' (OpenCV)")
    dtype = arr.dtype
    if dtype == np.float64:
        arr = arr.astype(np.float32)
    if dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise MCANError(f"image array of dtype {dtype}: use uint8, uint16, float32 or float64 (in [0, 1])")
    img = decode_array(arr, "image array", order)
    depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(np.dtype(dtype), 32)
    shape = arr.shape

    def restore(rgb: np.ndarray) -> np.ndarray:
        out = encode_array(rgb, img.alpha, depth, img.gray, order)
        if img.gray:  # back to the caller's gray layout: (H, W), (H, W, 1) or gray + alpha (H, W, 2)
            out = out[:, :, [0, 3]] if img.alpha is not None else out[:, :, 0]
            out = out.reshape(shape)
        return out.astype(dtype, copy=False)

    return img, restore


def _from_pil(image: Any, order: ChannelOrder) -> tuple[LoadedImage, Callable[[np.ndarray], Any]]:
    from PIL import Image

    mode = image.mode
    if mode not in ("L", "LA", "I;16", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in mode or "transparency" in image.info else "RGB")
    img, restore = from_numpy(np.asarray(image), "rgb")
    return img, lambda rgb: Image.fromarray(restore(rgb))  # the mode follows the array: L, LA, I;16, RGB(A)


def to_engine(
    image: Any, order: ChannelOrder = "rgb", io: DeviceIO | None = None
) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]:
    """``image`` as engine inputs, (3, H, W) float32 (one per batch item), and the function
    that turns the engine's outputs back into ``image``'s kind. With a GPU's ``io``, integer
    colour arrays cross the bus as integers and convert on the device, bit for bit as here, and
    tensors stay on the device; else the inputs are on the CPU."""
    if isinstance(image, torch.Tensor):
        return _tensor_to_engine(image, io)
    if isinstance(image, np.ndarray):
        if io is not None and io.cuda and _device_ready(image, order):
            return _numpy_on_device(image, order, io)
        img, restore = from_numpy(image, order)
        return [_chw(img)], lambda outs: restore(_hwc(outs[0]))
    if type(image).__module__.startswith("PIL."):
        img, back = _from_pil(image, order)
        return [_chw(img)], lambda outs: back(_hwc(outs[0]))
    raise MCANError(
        f"cannot upscale a {type(image).__name__}: give a numpy array (H, W[, C]), a PIL image "
        "or a torch tensor (C, H, W) / (N, C, H, W)"
    )


def _device_ready(arr: np.ndarray, order: str) -> bool:
    """Colour uint8/uint16 arrays (H, W, 3|4) in a known order: what ``_numpy_on_device`` takes."""
    return (
        order in ("rgb", "bgr")
        and arr.dtype in (np.uint8, np.uint16)
        and arr.ndim == 3
        and arr.shape[2] in (3, 4)
        and arr.shape[0] > 0
        and arr.shape[1] > 0
    )


def _numpy_on_device(
    arr: np.ndarray, order: str, io: DeviceIO
) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], np.ndarray]]:
    depth = 8 if arr.dtype == np.uint8 else 16
    peak = 255.0 if depth == 8 else 65535.0
    x = io.ready(io.upload(arr, order))
    alpha = arr[:, :, 3] if arr.shape[2] == 4 else None

    def back(outs: list[torch.Tensor]) -> np.ndarray:
        pixels = io.download(outs[0], depth, order).numpy()
        if alpha is None:
            return pixels
        a = np.clip(np.rint(alpha.astype(np.float32) / peak * peak), 0, peak).astype(arr.dtype)  # as the host rounds it
        return np.concatenate([pixels, a[:, :, None]], axis=2)

    return [x], back


def _chw(img: LoadedImage) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.rgb.transpose(2, 0, 1)))


def _hwc(out: torch.Tensor) -> np.ndarray:
    return out.clamp(0, 1).permute(1, 2, 0).numpy()


def _same_gpu(t: torch.Tensor, device: torch.device) -> bool:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return t.is_cuda and t.device.index == index


def _tensor_to_engine(
    t: torch.Tensor, io: DeviceIO | None = None
) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], torch.Tensor]]:
    if not t.is_floating_point():
        raise MCANError(f"tensor of dtype {t.dtype}: give floating point values in [0, 1]")
    batched = t.dim() == 4
    if t.dim() not in (3, 4) or t.shape[-3] not in (1, 3, 4):
        raise MCANError(f"tensor of shape {tuple(t.shape)}: expected (C, H, W) or (N, C, H, W) with C = 1, 3 or 4")
    items = t if batched else t[None]
    c = items.shape[1]
    keep = io is not None and io.cuda and _same_gpu(t, io.device)  # already on the runner's GPU
    xs = [item.detach().to(t.device if keep else "cpu", torch.float32) for item in items]
    engine_in = [x.expand(3, -1, -1).contiguous() if c == 1 else x[:3].contiguous() for x in xs]

    def back(outs: list[torch.Tensor]) -> torch.Tensor:
        res = []
        for x, out in zip(xs, outs):
            out = out.clamp(0, 1)
            if c == 1:
                out = out.mean(0, keepdim=True)
            elif c == 4:
                out = torch.cat([out, x[3:]])
            res.append(out)
        stacked = torch.stack(res).to(t.device, t.dtype)
        return stacked if batched else stacked[0]

    return engine_in, back
