"""What a photo carries survives mcan-upscale (issue 19): orientation, colour profile, EXIF,
PNG text and DPI, JPEG/WebP options, and malformed metadata dropped with one warning.

Every file is made here with Pillow; the references are Pillow's own readers
(``ImageOps.exif_transpose``, ``info["icc_profile"]``, ``getexif()``) and the model run on the
upright pixels directly."""

from __future__ import annotations

import io
import logging
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin, PngImagePlugin

from mcan_deploy.checkpoint import save_model
from mcan_deploy.cli.upscale import main
from mcan_deploy.errors import MCANError
from mcan_deploy.metadata import EncodeOptions, upright
from mcan_deploy.model import ModelConfig, build_model
from mcan_deploy.runners import TorchRunner

from .helpers import png_chunks

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
# an RGB profile whose bytes differ from Pillow's sRGB (another device model): what a camera embeds
OTHER_RGB = SRGB[:48] + b"TEST" + SRGB[52:]
GRAY_ICC = SRGB[:16] + b"GRAY" + SRGB[20:]  # a profile for gray data (its header says so)
IFD1 = -1  # PIL.ExifTags.IFD.IFD1


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_blocks=1, n_resblocks=1, n_feats=4))
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, model)
    return path, model


def expected(model, rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB through the whole model, as uint8 RGB."""
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32) / 255)[None]
    out = TorchRunner(model, torch.device("cpu")).run_blocks(x, 0, 1)[0].clamp(0, 1)
    return np.rint(out.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def upscale(model_path, inputs, out, *extra):
    assert (
        main([str(model_path), *map(str, inputs), "-o", str(out), "--backend", "torch", "--no-progress", *extra]) == 0
    )


def photo(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def exif_with(**tags) -> Image.Exif:
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[int(tag.removeprefix("t"), 16)] = value
    return exif


def test_upright_follows_exif_transpose_for_every_orientation():
    arr = photo(3, 5)
    for o in range(1, 9):
        im = Image.fromarray(arr)
        im.getexif()[0x0112] = o
        im.info["exif"] = im.getexif().tobytes()
        want = np.asarray(ImageOps.exif_transpose(im))
        assert np.array_equal(upright(arr, o), want), o


def test_every_orientation_displays_as_the_input_did(model_file, tmp_path):
    """Orientation 1-8: the output, opened with exif_transpose, equals the model run on the input
    opened the same way (the pixels are turned upright first, the tag reset to 1)."""
    path, model = model_file
    src = tmp_path / "in"
    src.mkdir()
    arr = photo()
    for o in range(1, 9):
        Image.fromarray(arr).save(src / f"o{o}.png", exif=exif_with(t0112=o, t010F="Phone"))
    upscale(path, [src], tmp_path / "out", "--tile", "16")
    for o in range(1, 9):
        out = Image.open(tmp_path / "out" / f"o{o}.png")
        assert out.getexif().get(0x0112) == 1 and out.getexif().get(0x010F) == "Phone"
        want = expected(model, np.asarray(ImageOps.exif_transpose(Image.open(src / f"o{o}.png"))))
        got = np.asarray(ImageOps.exif_transpose(out))
        assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1, o


@pytest.mark.parametrize("out_suffix", [".png", ".jpg", ".tif", ".webp"])
def test_the_colour_profile_is_written_byte_for_byte_into_every_format(model_file, tmp_path, out_suffix):
    path, _ = model_file
    src = tmp_path / "in"
    src.mkdir()
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif"), ("WEBP", ".webp")):
        Image.fromarray(photo()).save(src / f"from_{fmt}{suffix}", fmt, icc_profile=OTHER_RGB)
    upscale(path, [src], tmp_path / "out", "--suffix", out_suffix)
    outs = sorted((tmp_path / "out").iterdir())
    assert len(outs) == 4
    for out in outs:
        assert Image.open(out).info.get("icc_profile") == OTHER_RGB, out.name


@pytest.mark.parametrize("out_suffix", [".png", ".tif"])
def test_16_bit_outputs_keep_their_profile_and_their_bits(model_file, tmp_path, out_suffix):
    import cv2

    path, _ = model_file
    rgb16 = np.random.default_rng(1).integers(0, 65536, (12, 18, 3), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", rgb16)
    plain = Image.open(io.BytesIO(buf.tobytes()))
    assert ok and plain.info.get("icc_profile") is None
    # an ICC profile into OpenCV's 16-bit PNG, by way of a 16-bit TIFF written with tifffile
    import tifffile

    tifffile.imwrite(tmp_path / "in16.tif", rgb16, photometric="rgb", iccprofile=OTHER_RGB, resolution=(300, 300))
    upscale(path, [tmp_path / "in16.tif"], tmp_path / "out", "--suffix", out_suffix)
    out = tmp_path / "out" / f"in16{out_suffix}"
    assert Image.open(out).info.get("icc_profile") == OTHER_RGB
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (12, 18, 3)


def _exif_with_thumbnail(make: str, thumb: bytes) -> bytes:
    """EXIF whose IFD1 holds a JPEG thumbnail (Pillow never writes IFD1, so built here):
    TIFF header, IFD0 with Make (over 4 bytes: stored at an offset), IFD1 with
    JPEGInterchangeFormat and its length."""
    head = b"II*\x00" + struct.pack("<I", 8)
    make_b = make.encode() + b"\x00"
    ifd1_at = 8 + 2 + 12 + 4
    make_at = ifd1_at + 2 + 2 * 12 + 4
    thumb_at = make_at + len(make_b)
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, len(make_b), make_at) + struct.pack("<I", ifd1_at)
    ifd1 = (
        struct.pack("<H", 2)
        + struct.pack("<HHII", 0x0201, 4, 1, thumb_at)
        + struct.pack("<HHII", 0x0202, 4, 1, len(thumb))
        + struct.pack("<I", 0)
    )
    return b"Exif\x00\x00" + head + ifd0 + ifd1 + make_b + thumb


def test_exif_is_kept_with_sizes_updated_after_scale_and_no_thumbnail(model_file, tmp_path):
    path, _ = model_file
    # a phone JPEG: stored 30x20, orientation 6 (shown 20x30), camera tags, pixel sizes, an ICC
    exif = exif_with(t0112=6, t010F="PhoneMaker", t0110="Phone 9", t0132="2026:12:02 10:00:00")
    exif.get_ifd(0x8769).update({0xA002: 30, 0xA003: 20, 0x829A: 0.01})
    Image.fromarray(photo()).save(tmp_path / "phone.jpg", exif=exif, icc_profile=SRGB, quality=95)
    upscale(path, [tmp_path / "phone.jpg"], tmp_path / "out", "--scale", "2")
    out = Image.open(tmp_path / "out" / "phone.jpg")
    got = out.getexif()
    assert out.size == (40, 60), "upright (20x30) and then twice the size"
    assert got[0x0112] == 1 and got[0x010F] == "PhoneMaker" and got[0x0110] == "Phone 9"
    assert got[0x0132] == "2026:12:02 10:00:00"
    sub = got.get_ifd(0x8769)
    assert (sub[0xA002], sub[0xA003]) == (40, 60) and float(sub[0x829A]) == pytest.approx(0.01)
    assert out.info["icc_profile"] == SRGB
    # an input with an embedded thumbnail: the output's EXIF has none
    buf = io.BytesIO()
    Image.fromarray(photo(4, 6)).save(buf, "JPEG")
    Image.fromarray(photo()).save(tmp_path / "thumb.jpg", exif=_exif_with_thumbnail("CameraCo", buf.getvalue()))
    assert Image.open(tmp_path / "thumb.jpg").getexif().get_ifd(IFD1), "the input does carry a thumbnail"
    upscale(path, [tmp_path / "thumb.jpg"], tmp_path / "out")
    out_exif = Image.open(tmp_path / "out" / "thumb.jpg").getexif()
    assert out_exif[0x010F] == "CameraCo" and not out_exif.get_ifd(IFD1)


def test_png_text_and_dpi_are_kept(model_file, tmp_path):
    path, _ = model_file
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "harbour at dusk")
    info.add_itxt("Description", "Hafen bei Dämmerung")
    Image.fromarray(photo()).save(tmp_path / "t.png", pnginfo=info, dpi=(300, 300))
    upscale(path, [tmp_path / "t.png"], tmp_path / "out")
    upscale(path, [tmp_path / "t.png"], tmp_path / "out", "--suffix", ".jpg")
    png, jpg = Image.open(tmp_path / "out" / "t.png"), Image.open(tmp_path / "out" / "t.jpg")
    assert png.text["Title"] == "harbour at dusk" and png.text["Description"] == "Hafen bei Dämmerung"
    assert png.info["dpi"] == pytest.approx((300, 300), abs=0.01) and jpg.info["dpi"] == (300, 300)


def test_png_metadata_is_read_without_decoding_the_pixels_unless_it_follows_them(tmp_path, monkeypatch):
    """Pillow's PNG ``getexif`` decodes every pixel to look for EXIF after the image data (the
    larger part of reading a 12 MP photo). A file whose EXIF and text come first is read
    without that decode; one whose EXIF and text follow the pixels still carries both."""
    from mcan_deploy.metadata import read_meta

    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "harbour")
    buf = io.BytesIO()
    Image.fromarray(photo()).save(buf, "PNG", pnginfo=info, exif=exif_with(t0112=6, t010F="Cam"))
    first = buf.getvalue()
    chunks = [whole for _, _, whole in png_chunks(first)]
    kinds = [c[4:8] for c in chunks]
    assert kinds.index(b"eXIf") < kinds.index(b"IDAT") and kinds.index(b"tEXt") < kinds.index(b"IDAT")
    moved = [c for c in chunks if c[4:8] in (b"eXIf", b"tEXt")]
    rest = [c for c in chunks if c not in moved]
    last = first[:8] + b"".join(rest[:-1] + moved + rest[-1:])  # the same chunks, after the IDAT, before IEND
    assert Image.open(io.BytesIO(last)).getexif()[0x010F] == "Cam", "Pillow itself finds the late EXIF"

    decodes = []
    real_load = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda im: decodes.append(1) or real_load(im))
    for data, decoded in ((first, 0), (last, 1)):
        decodes.clear()
        meta = read_meta(data, "in.png")
        assert len(decodes) == decoded
        assert meta.orientation == 6 and meta.text == {"Title": "harbour"}
        assert meta.exif is not None
        exif = Image.Exif()
        exif.load(meta.exif)
        assert exif[0x010F] == "Cam"
    # no metadata at all (a camera's or OpenCV's PNG): no decode either
    plain = io.BytesIO()
    Image.fromarray(photo()).save(plain, "PNG")
    decodes.clear()
    assert read_meta(plain.getvalue(), "plain.png").empty and not decodes
    # a chunk list that does not parse is left to Pillow, which decodes, as before
    read_meta(plain.getvalue()[:-20], "cut.png")
    assert decodes


@pytest.mark.parametrize(
    "case,warning",
    [
        ("truncated_exif", "EXIF does not parse"),
        ("bad_icc", "colour profile of 13 bytes does not parse"),
        ("orientation_9", "EXIF orientation 9 is not 1-8"),
    ],
)
def test_malformed_metadata_is_dropped_with_one_warning(model_file, tmp_path, caplog, case, warning):
    path, model = model_file
    arr = photo()
    src = tmp_path / "in.png"
    if case == "truncated_exif":
        whole = exif_with(t010F="Cam", t0110="Model", t0131="Software").tobytes()
        Image.fromarray(arr).save(src, exif=whole[: len(whole) // 2])
    elif case == "bad_icc":
        Image.fromarray(arr).save(src, icc_profile=b"not a profile")
    else:
        Image.fromarray(arr).save(src, exif=exif_with(t0112=9, t010F="Cam"))
    with caplog.at_level(logging.WARNING, logger="mcan_deploy"):
        upscale(path, [src], tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and warning in lines[0] and "in.png" in lines[0], lines
    out = Image.open(tmp_path / "out" / "in.png")
    assert np.abs(np.asarray(out).astype(int) - expected(model, arr).astype(int)).max() <= 1, "as stored"
    if case == "bad_icc":
        assert "icc_profile" not in out.info
    if case == "orientation_9":
        assert out.getexif().get(0x010F) == "Cam"


def test_jpeg_and_webp_options(model_file, tmp_path):
    path, _ = model_file
    Image.fromarray(photo(64, 64)).save(tmp_path / "p.png")
    upscale(path, [tmp_path / "p.png"], tmp_path / "a", "--suffix", ".jpg")
    upscale(path, [tmp_path / "p.png"], tmp_path / "b", "--suffix", ".jpg", "--jpeg-subsampling", "4:2:0",
            "--jpeg-quality", "50")  # fmt: skip
    a, b = Image.open(tmp_path / "a" / "p.jpg"), Image.open(tmp_path / "b" / "p.jpg")
    assert JpegImagePlugin.get_sampling(a) == 0 and JpegImagePlugin.get_sampling(b) == 2, "4:4:4 by default"
    assert (tmp_path / "b" / "p.jpg").stat().st_size < (tmp_path / "a" / "p.jpg").stat().st_size
    upscale(path, [tmp_path / "p.png"], tmp_path / "c", "--suffix", ".webp", "--webp-lossless")
    upscale(path, [tmp_path / "p.png"], tmp_path / "c", "--suffix", ".png")
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "c" / "p.webp")), np.asarray(Image.open(tmp_path / "c" / "p.png"))
    )
    with pytest.raises(MCANError, match="jpeg quality 0: give 1 to 100"):
        EncodeOptions(jpeg_quality=0)


def test_the_api_writes_what_the_cli_writes(model_file, tmp_path):
    import mcan_deploy

    path, _ = model_file
    Image.fromarray(photo()).save(tmp_path / "p.jpg", exif=exif_with(t0112=8, t010F="Cam"), icc_profile=OTHER_RGB)
    upscale(path, [tmp_path / "p.jpg"], tmp_path / "cli")
    mcan_deploy.load(path, backend="torch").upscale_file(tmp_path / "p.jpg", tmp_path / "api" / "p.jpg")
    cli, api = (tmp_path / "cli" / "p.jpg").read_bytes(), (tmp_path / "api" / "p.jpg").read_bytes()
    assert cli == api and Image.open(io.BytesIO(api)).size == (20, 30)


def test_alpha_and_scale_follow_the_upright_image(model_file, tmp_path):
    """Stored 20x30 with the left half opaque, orientation 6 (rotate 90 clockwise): upright it is
    30x20 with the top half opaque; --scale 2 makes that 60x40, and alpha is resized with it."""
    path, _ = model_file
    rgba = np.dstack([photo(), np.zeros((20, 30), np.uint8)])
    rgba[:, :15, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png", exif=exif_with(t0112=6))
    upscale(path, [tmp_path / "a.png"], tmp_path / "out", "--scale", "2")
    out = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert out.shape == (60, 40, 4)
    assert (out[:26, :, 3] == 255).all() and (out[34:, :, 3] == 0).all(), "top half opaque, bottom clear"


def test_alpha_into_jpeg_and_unwritable_metadata_never_fail_an_image(model_file, tmp_path, caplog, monkeypatch):
    from mcan_deploy import metadata

    path, _ = model_file
    rgba = np.dstack([photo(), np.full((20, 30), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png", icc_profile=OTHER_RGB)
    upscale(path, [tmp_path / "a.png"], tmp_path / "out", "--suffix", ".jpg")  # JPEG holds no alpha
    out = Image.open(tmp_path / "out" / "a.jpg")
    assert out.mode == "RGB" and out.info["icc_profile"] == OTHER_RGB
    real = metadata._encode

    def broken(arr, fmt, meta, options):  # metadata a writer rejects
        if not meta.empty:
            raise ValueError("tag cannot be serialised")
        return real(arr, fmt, meta, options)

    monkeypatch.setattr(metadata, "_encode", broken)
    with caplog.at_level(logging.WARNING, logger="mcan_deploy"):
        upscale(path, [tmp_path / "a.png"], tmp_path / "out2", "--suffix", ".jpg")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "metadata could not be written" in lines[0] and "a.jpg" in lines[0], lines
    assert "icc_profile" not in Image.open(tmp_path / "out2" / "a.jpg").info


def test_a_tiff_inputs_own_tags_are_not_taken_for_exif(model_file, tmp_path):
    """A TIFF's IFD0 holds its strips, samples and ICC copy; only its camera tags (and Exif
    sub-IFD) are EXIF. Into a JPEG: make and software kept, none of the structure, ICC once."""
    path, _ = model_file
    exif = exif_with(t010F="TiffCam", t0131="ScanSoft")  # (Pillow writes no Exif sub-IFD into TIFF)
    Image.fromarray(photo()).save(tmp_path / "t.tif", exif=exif, icc_profile=OTHER_RGB, dpi=(600, 600))
    upscale(path, [tmp_path / "t.tif"], tmp_path / "out", "--suffix", ".jpg")
    upscale(path, [tmp_path / "t.tif"], tmp_path / "out", "--suffix", ".tif")
    jpg, tif = Image.open(tmp_path / "out" / "t.jpg"), Image.open(tmp_path / "out" / "t.tif")
    got = jpg.getexif()
    assert got[0x010F] == "TiffCam" and got[0x0131] == "ScanSoft"
    assert not {256, 257, 258, 259, 262, 273, 277, 278, 279, 34675} & set(got), sorted(got)
    assert jpg.info["icc_profile"] == OTHER_RGB and jpg.info["dpi"] == (600, 600)
    assert tif.info["icc_profile"] == OTHER_RGB and tif.tag_v2[271] == "TiffCam" and tif.tag_v2[305] == "ScanSoft"
    assert 270 not in tif.tag_v2, "no tifffile JSON description"


def test_profiles_for_other_data_other_text_blocks_and_absurd_dpi_are_left_out(model_file, tmp_path, caplog):
    path, _ = model_file
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "kept")
    info.add_text("Raw profile type exif", "stale orientation and thumbnail")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>")
    Image.fromarray(photo()).save(tmp_path / "rgb.png", icc_profile=GRAY_ICC, pnginfo=info, dpi=(70000, 70000))
    Image.fromarray(photo()[:, :, 0]).save(tmp_path / "gray.png", icc_profile=GRAY_ICC)
    with caplog.at_level(logging.WARNING, logger="mcan_deploy"):
        upscale(path, [tmp_path / "rgb.png", tmp_path / "gray.png"], tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2 and "DPI is outside" in lines[0] and "'GRAY' data, the output is RGB" in lines[1], lines
    rgb, gray = Image.open(tmp_path / "out" / "rgb.png"), Image.open(tmp_path / "out" / "gray.png")
    assert "icc_profile" not in rgb.info and gray.info["icc_profile"] == GRAY_ICC and gray.mode == "L"
    assert rgb.text == {"Title": "kept"} and "dpi" not in rgb.info


def test_training_still_reads_pairs_as_stored(tmp_path):
    from mcan_deploy.io import read_image

    arr = photo()
    Image.fromarray(arr).save(tmp_path / "o6.png", exif=exif_with(t0112=6))
    img = read_image(tmp_path / "o6.png")
    assert np.array_equal(np.rint(img.rgb * 255).astype(np.uint8), arr), "orientation not applied to training pairs"


@pytest.mark.parametrize("orientation", range(2, 9))
def test_a_tiffs_own_orientation_tag_turns_it_upright(model_file, tmp_path, orientation):
    """In a TIFF the orientation is a tag of its IFD0, and OpenCV's TIFF decoder applies it
    itself: turned upright once, not twice (and not left as stored)."""
    path, model = model_file
    Image.fromarray(photo()).save(tmp_path / "o6.tif", exif=exif_with(t0112=orientation, t010F="TiffCam"))
    assert Image.open(tmp_path / "o6.tif").getexif()[0x0112] == orientation
    upscale(path, [tmp_path / "o6.tif"], tmp_path / "out", "--suffix", ".png")
    out = Image.open(tmp_path / "out" / "o6.png")
    want = expected(model, np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o6.tif"))))
    got = np.asarray(out)
    assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert out.getexif()[0x010F] == "TiffCam" and out.getexif().get(0x0112, 1) == 1
