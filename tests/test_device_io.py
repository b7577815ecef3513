"""Device-side image conversions (device_io.py) against the host's (io.decode_array,
io.encode_array), bit for bit, and the GPU code paths of the API and of mcan-upscale's pipeline
against the host paths: the same arrays and byte-identical files.

The conversions are torch operations, run here on CPU tensors; on a GPU the same operations run
on the device (exact IEEE division, multiplication and round-half-even on both). The pipeline's
GPU branch is driven by a DeviceIO that says it is on CUDA but converts synchronously on the CPU,
so what is checked is that the branch computes the same files, not the streams.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcan_deploy.device_io import DeviceIO, Pending, device_decode, device_encode
from mcan_deploy.io import decode_array, encode_array

# on a GPU machine (gpu_check.sh) the conversions run on the GPU: CUDA's division differs from
# the CPU's where it is not told to divide exactly
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("order", ["bgr", "rgb"])
@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["8bit", "16bit"])
def test_decode_on_the_device_equals_the_host(dtype, channels, order):
    peak = np.iinfo(dtype).max
    arr = np.random.default_rng(0).integers(0, peak + 1, (37, 29, channels)).astype(dtype)
    arr[0, :4, 0] = [0, 1, peak - 1, peak]  # the ends of the range
    host = decode_array(arr, "x", order).rgb.transpose(2, 0, 1)
    dev = device_decode(torch.from_numpy(arr).to(DEVICE), order)
    assert dev.dtype == torch.float32 and dev.shape == (3, 37, 29) and dev.device.type == DEVICE.type
    assert np.array_equal(dev.cpu().numpy(), host)


def _ties(peak: float) -> np.ndarray:
    """float32 values whose product with ``peak`` is exactly k + 0.5: where rounding decides."""
    k = np.arange(0, int(min(peak, 4000)), dtype=np.float64)
    v = ((k + 0.5) / peak).astype(np.float32)
    return v[(v * np.float32(peak)) == (k + 0.5).astype(np.float32)]


@pytest.mark.parametrize("order", ["rgb", "bgr"])
@pytest.mark.parametrize("depth", [8, 16])
def test_encode_on_the_device_equals_the_host_including_ties_and_out_of_range(depth, order):
    peak = 255.0 if depth == 8 else 65535.0
    ties = _ties(peak)
    assert len(ties) > 20, "the test needs exact halves"
    g = torch.Generator().manual_seed(1)
    y = torch.rand(3, 40, 50, generator=g) * 1.4 - 0.2  # below 0 and above 1 too
    flat = y.view(-1)
    flat[: len(ties)] = torch.from_numpy(ties)
    host = encode_array(y.clamp(0, 1).permute(1, 2, 0).numpy(), None, depth, False, order)
    assert host.flags.c_contiguous, "in the order a file stores it, from a permuted view (no copy to write it)"
    dev = device_encode(y.to(DEVICE), depth, order).cpu()
    assert dev.dtype == (torch.uint8 if depth == 8 else torch.uint16) and dev.shape == (40, 50, 3)
    assert np.array_equal(dev.numpy(), host)
    # half to even, as numpy's rint: 0.5 -> 0, 1.5 -> 2
    half = device_encode(torch.tensor([0.5, 1.5, 2.5]).div(peak).view(3, 1, 1), depth).view(-1).tolist()
    assert half == [0, 2, 2]


def test_bad_pixels_are_errors():
    with pytest.raises(TypeError, match="uint8 or uint16"):
        device_decode(torch.zeros(4, 4, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="colour pixels"):
        device_decode(torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="bit depth"):
        device_encode(torch.zeros(3, 2, 2), 12)


class CpuAsGpu(DeviceIO):
    """The GPU branch of the callers, with synchronous CPU conversions in place of streams."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))
        self.cuda = True
        self.uploads = self.downloads = 0

    def upload(self, pixels, order="bgr"):
        self.uploads += 1
        t = torch.from_numpy(np.ascontiguousarray(pixels)) if isinstance(pixels, np.ndarray) else pixels
        return Pending(device_decode(t, order) if t.dtype in (torch.uint8, torch.uint16) else t.clone())

    def ready(self, pending):
        return pending.value

    def download(self, image, depth, order="rgb"):
        self.downloads += 1
        return Pending(device_encode(image, depth, order) if depth is not None else image.float())


@pytest.fixture(scope="module")
def runner():
    from mcan_deploy.model import ModelConfig, build_model
    from mcan_deploy.runners import TorchRunner

    torch.manual_seed(0)
    return TorchRunner(build_model(ModelConfig(n_blocks=1, n_resblocks=1, n_feats=8)), torch.device("cpu"))


@pytest.mark.parametrize("order", ["rgb", "bgr"])
@pytest.mark.parametrize("kind", ["uint8 rgb", "uint16 rgba", "uint8 gray", "float32"])
def test_the_api_on_a_gpu_returns_what_the_host_path_returns(runner, monkeypatch, kind, order):
    from mcan_deploy import api
    from mcan_deploy.describe import ModelInfo
    from mcan_deploy.tiling import TileConfig

    rng = np.random.default_rng(2)
    arr = {
        "uint8 rgb": lambda: rng.integers(0, 256, (30, 22, 3)).astype(np.uint8),
        "uint16 rgba": lambda: rng.integers(0, 65536, (30, 22, 4)).astype(np.uint16),
        "uint8 gray": lambda: rng.integers(0, 256, (30, 22)).astype(np.uint8),
        "float32": lambda: rng.random((30, 22, 3), dtype=np.float32),
    }[kind]()
    info = ModelInfo.__new__(ModelInfo)
    host = api.Upscaler(runner, info, TileConfig(tile=16)).upscale(arr, channel_order=order)
    gpu = api.Upscaler(runner, info, TileConfig(tile=16))
    gpu._io = io = CpuAsGpu()
    out = gpu.upscale(arr, channel_order=order)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, host)
    on_device = kind in ("uint8 rgb", "uint16 rgba")
    assert (io.uploads, io.downloads) == ((1, 1) if on_device else (0, 0)), "which inputs take the device path"


def _photos(folder):
    import cv2

    folder.mkdir()
    rng = np.random.default_rng(3)
    cv2.imwrite(str(folder / "rgb8.png"), rng.integers(0, 256, (26, 31, 3)).astype(np.uint8))
    cv2.imwrite(str(folder / "rgba16.png"), rng.integers(0, 65536, (26, 31, 4)).astype(np.uint16))
    cv2.imwrite(str(folder / "gray.png"), rng.integers(0, 256, (26, 31)).astype(np.uint8))
    cv2.imwrite(str(folder / "photo.jpg"), rng.integers(0, 256, (26, 31, 3)).astype(np.uint8))
    cv2.imwrite(str(folder / "deep.tif"), rng.integers(0, 65536, (26, 31, 3)).astype(np.uint16))


@pytest.mark.parametrize("suffix", [None, ".jpg"])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_the_pipeline_on_a_gpu_writes_the_host_paths_files(runner, tmp_path, monkeypatch, prefetch, suffix):
    """8- and 16-bit colour, alpha, gray, JPEG and TIFF inputs; PNG/TIFF or JPEG outputs (16-bit
    inputs to an 8-bit format): every file byte-identical to the host path's."""
    from mcan_deploy.tiling import TileConfig
    from mcan_deploy.upscale import batch as upscale_mod
    from mcan_deploy.upscale import plan_jobs

    _photos(tmp_path / "in")
    cfg = TileConfig(tile=16)
    host = upscale_mod.upscale_jobs(
        runner,
        plan_jobs([tmp_path / "in"], tmp_path / "host", suffix),
        cfg,
        prefetch=prefetch,
        progress=False,
    )
    io = CpuAsGpu()
    real = upscale_mod.prepare

    def prepare(job, scale=1.0, max_pixels=upscale_mod.DEFAULT_MAX_PIXELS, _io=None, source=None):
        return real(job, scale, max_pixels, io, source)

    monkeypatch.setattr(upscale_mod, "prepare", prepare)
    real_fetch = upscale_mod.fetch_result
    monkeypatch.setattr(
        upscale_mod, "fetch_result", lambda job, prepared, out, _io=None: real_fetch(job, prepared, out, io)
    )
    gpu = upscale_mod.upscale_jobs(
        runner,
        plan_jobs([tmp_path / "in"], tmp_path / "gpu", suffix),
        cfg,
        prefetch=prefetch,
        progress=False,
    )
    assert host.done == gpu.done == 5 and gpu.failed == 0
    names = sorted(p.name for p in (tmp_path / "host").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "gpu").iterdir())
    for name in names:
        assert (tmp_path / "gpu" / name).read_bytes() == (tmp_path / "host" / name).read_bytes(), name
    # colour inputs cross as integers (rgb8, rgba16, jpg, tif); gray goes up as float
    assert io.uploads == 5 and io.downloads == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the streams and pinned copies need a CUDA device")
def test_real_uploads_and_downloads_on_side_streams_equal_the_host_conversions():
    """The real DeviceIO on a GPU (gpu_check.sh runs it): pinned memory, side streams, events."""
    import threading

    io = DeviceIO(torch.device("cuda"))
    arr = np.random.default_rng(4).integers(0, 256, (300, 200, 3)).astype(np.uint8)
    ups: list[Pending] = []
    worker = threading.Thread(target=lambda: ups.append(io.upload(arr, "bgr")))  # as the decode pool does
    worker.start()
    worker.join()
    x = io.ready(ups[0])
    assert x.is_cuda and np.array_equal(x.cpu().numpy(), decode_array(arr, "x", "bgr").rgb.transpose(2, 0, 1))
    y = (x * 1.1 - 0.05).contiguous()
    pending = io.download(y, 8, "bgr")
    host = encode_array(y.clamp(0, 1).permute(1, 2, 0).cpu().numpy(), None, 8, False, "bgr")
    assert np.array_equal(pending.numpy(), host)
    assert pending.result().is_pinned()
