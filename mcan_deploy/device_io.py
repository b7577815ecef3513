"""Images between the host and a GPU at the device's speed: integer pixels cross the bus, the
conversions run on the device, the copies use pinned memory on their own streams.

The first GPU run spent about 0.2 s of a 0.7 s photo on float32 conversions and a device-to-host
copy of a float32 result into pageable memory (144 MB at 1.5 GB/s for 12 MP). Here a uint8 photo
goes up as 36 MB from pinned memory and comes back as 36 MB into pinned memory; the division by
255 and the rounding back happen on the device. ``upload``/``download`` return at once: the
copies run on side streams, so a folder's next upload and last download overlap the model.

The conversions equal the host's bit for bit (``io.decode_array`` / ``io.encode_array``): x / 255
(or 65535) in float32, and rint(clamp(y, 0, 1) * 255) (half to even), both exact IEEE operations
on either side. Gray outputs (a mean of three colours, whose summation order could differ) and
float outputs stay on the host.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DeviceIO", "Pending", "device_decode", "device_encode"]

PEAK = {8: 255.0, 16: 65535.0}
NUMPY_DTYPE = {8: np.uint8, 16: np.uint16}
TORCH_DTYPE = {8: torch.uint8, 16: torch.uint16}


def device_decode(pixels: torch.Tensor, order: str = "bgr") -> torch.Tensor:
    """(H, W, C) uint8/uint16 colour pixels (C = 3 or 4, ``order`` bgr or rgb) on any device as
    the engine's (3, H, W) float32 RGB in [0, 1], on the same device; alpha is not included."""
    if pixels.dim() != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"device_decode: expected (H, W, 3 or 4) colour pixels, got shape {tuple(pixels.shape)}")
    depth = {torch.uint8: 8, torch.uint16: 16}.get(pixels.dtype)
    if depth is None:
        raise TypeError(f"device_decode: pixels of dtype {pixels.dtype}; expected uint8 or uint16")
    # float32 first: CUDA casts every integer type, while indexing kernels skip uint16
    chw = pixels.permute(2, 0, 1).to(torch.float32)
    rgb = chw[[2, 1, 0]] if order == "bgr" else chw[:3]
    # by a tensor on the device, not a Python number: CUDA turns x / number into x * (1 / number),
    # which is one bit off for 126 of the 256 uint8 values; tensor / tensor divides exactly
    return rgb.div_(torch.full((), PEAK[depth], device=rgb.device)).contiguous()


def device_encode(image: torch.Tensor, depth: int, order: str = "rgb") -> torch.Tensor:
    """The engine's (3, H, W) float image as (H, W, 3) uint8/uint16 pixels (``depth`` 8 or 16)
    in ``order``, on the image's device, rounded as files store them."""
    if depth not in PEAK:
        raise ValueError(f"device_encode: bit depth {depth}; use 8 or 16")
    peak = PEAK[depth]
    img = image.float().clamp(0.0, 1.0).mul_(peak).round_().clamp_(0.0, peak)
    if order == "bgr":
        img = img.flip(0)
    # uint16 has no CUDA cast kernel of its own in older torch releases: int32 first, exact
    return img.to(torch.int32).to(TORCH_DTYPE[depth]).permute(1, 2, 0).contiguous()


@dataclass
class Pending:
    """A result on its way from the device: ``result()`` waits for its copy and returns it."""

    value: torch.Tensor
    event: torch.cuda.Event | None = None

    def result(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.value

    def numpy(self) -> np.ndarray:
        return self.result().numpy()


class DeviceIO:
    """Uploads and downloads for one device. On a CPU device everything is synchronous and no
    copy is made that the host path would not make. Uploads and downloads may come from other
    threads (a decode pool, a write pool); each has its own stream per thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._local = threading.local()

    def _stream(self, kind: str) -> torch.cuda.Stream:
        stream = getattr(self._local, kind, None)
        if stream is None:
            stream = torch.cuda.Stream(self.device)
            setattr(self._local, kind, stream)
        return stream

    def upload(self, pixels: np.ndarray | torch.Tensor, order: str = "bgr") -> Pending:
        """Host pixels (H, W, 3|4) uint8/uint16 or an engine image (3, H, W) float32 to the
        device: the integers cross the bus, then ``device_decode`` runs there. ``ready`` the
        result on the stream that uses it."""
        t = torch.from_numpy(np.ascontiguousarray(pixels)) if isinstance(pixels, np.ndarray) else pixels
        decode = t.dtype in (torch.uint8, torch.uint16)
        if not self.cuda:
            return Pending(device_decode(t, order) if decode else t)
        stream = self._stream("up")
        pinned = t.pin_memory()
        with torch.cuda.stream(stream):
            on_device = pinned.to(self.device, non_blocking=True)
            x = device_decode(on_device, order) if decode else on_device
            event = torch.cuda.Event()
            event.record(stream)
        return Pending(x, event)

    def ready(self, pending: Pending) -> torch.Tensor:
        """The uploaded image, usable on the current stream (which waits for the copy, not the host)."""
        if pending.event is None:
            return pending.value
        current = torch.cuda.current_stream(self.device)
        current.wait_event(pending.event)
        pending.value.record_stream(current)  # its memory is not reused until this stream is done
        return pending.value

    def download(self, image: torch.Tensor, depth: int | None, order: str = "rgb") -> Pending:
        """The engine's (3, H, W) output to the host: as (H, W, 3) pixels of ``depth`` bits
        (encoded on the device), or as float32 (3, H, W) with ``depth`` None. Returns at once on
        CUDA; ``result()`` waits for the copy."""
        out = device_encode(image, depth, order) if depth is not None else image.float()
        if not self.cuda or not out.is_cuda:
            return Pending(out.cpu())
        stream = self._stream("down")
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        out.record_stream(stream)
        return Pending(host, event)
