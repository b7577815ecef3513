"""A 12 MP photo's file ends on this machine: the read and the PNG write as ``mcan-upscale`` does
them, against OpenCV's alone.

    python benchmarks/io_bench.py [--size 4000x3000] [--repeats 5] [--out benchmarks/results]

The photo is the bundled sample resized bicubically to ``--size`` (real image content: the
compressed size, and so the deflate work, is a photo's). Rows, each the median of ``--repeats``:

- read: OpenCV's ``imread`` alone; ``io.read_photo_array`` (decode and metadata, the pipeline's
  read); and the read as it was before the metadata fix, ``imread`` plus Pillow's PNG
  ``getexif`` (which decodes the whole image again when no EXIF precedes the pixels);
- write: OpenCV's ``imencode`` (its default PNG: SUB filter, zlib level 1, RLE) and
  ``png.encode_png`` on 1, 2, ... threads up to ``png.default_threads()``, with the file sizes.

Writes io-cpu-<date>.json and .md under ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:  # run as a script (python benchmarks/io_bench.py) or imported from the package
    from folder_bench import cpu_name
except ImportError:
    from benchmarks.folder_bench import cpu_name

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "photo" / "city100_001_LR.png"


def median_s(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="4000x3000", help="WxH of the test photo")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    import cv2
    import numpy as np
    from PIL import Image

    from mcan_deploy import png
    from mcan_deploy.io import read_photo_array

    w, h = (int(v) for v in args.size.lower().split("x"))
    bgr = cv2.resize(cv2.imread(str(PHOTO), cv2.IMREAD_COLOR), (w, h), interpolation=cv2.INTER_CUBIC)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.png"
        cv2.imwrite(str(path), bgr)
        data = path.read_bytes()

        def before() -> None:  # the read before the fix: the decode, then Pillow's getexif
            cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            Image.open(io.BytesIO(data)).getexif()

        for name, fn in [
            ("read: OpenCV imread alone", lambda: cv2.imread(str(path), cv2.IMREAD_UNCHANGED)),
            ("read: read_photo_array (decode + metadata)", lambda: read_photo_array(path)),
            ("read: as before the fix (imread + Pillow's PNG getexif)", before),
        ]:
            s, _ = median_s(fn, args.repeats)
            rows.append({"step": name, "s": s})
        s, buf = median_s(lambda: cv2.imencode(".png", bgr)[1], args.repeats)
        rows.append({"step": "write: OpenCV imencode (one thread)", "s": s, "mb": len(buf) / 1e6})
        counts = sorted({1, 2, png.default_threads()})
        for n in counts:
            s, out = median_s(lambda n=n: png.encode_png(rgb, threads=n), args.repeats)
            rows.append(
                {"step": f"write: png.encode_png, {n} thread{'s' if n > 1 else ''}", "s": s, "mb": len(out) / 1e6}
            )
            assert np.array_equal(cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED), bgr)
    date = datetime.now(UTC)
    result = {
        "benchmark": "io",
        "date": date.isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "png_default_threads": png.default_threads(),
        "size": f"{w}x{h}",
        "compressed_input_mb": len(data) / 1e6,
        "repeats": args.repeats,
        "opencv": cv2.__version__,
        "rows": rows,
        "command": f"python benchmarks/io_bench.py --size {args.size} --repeats {args.repeats}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"io-cpu-{date:%Y%m%d}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# A {w}x{h} photo's file ends, {date:%Y-%m-%d}",
        "",
        f"{result['cpu']}, {result['cores']} cores; OpenCV {cv2.__version__}; the bundled photo resized to "
        f"{w}x{h} ({len(data) / 1e6:.1f} MB as OpenCV's PNG). Medians of {args.repeats}.",
        "",
        "| step | s | MB |",
        "|---|---:|---:|",
        *(
            f"| {r['step']} | {r['s']:.3f} | {r['mb']:.2f} |" if "mb" in r else f"| {r['step']} | {r['s']:.3f} | |"
            for r in rows
        ),
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
