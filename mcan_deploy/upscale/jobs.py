"""Which files a run of ``mcan-upscale`` reads and where each result goes (``plan_jobs``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import MCANError
from ..io import IMAGE_SUFFIXES, list_images


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes."""

    src: Path
    dst: Path


def plan_jobs(inputs: list[str | Path], out: str | Path, suffix: str | None = None) -> list[Job]:
    """Map input files and folders (their images, not recursive) to output paths in ``out``.

    A single input file with an ``out`` that has an image suffix is written to exactly ``out``.
    An output path equal to its input is refused.
    """
    out = Path(out)
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise MCANError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(item)  # a missing or bad file is reported when it is processed
    if len(files) == 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        jobs = [Job(files[0], out)]
    else:
        jobs = [Job(f, out / (f.stem + (suffix or f.suffix or ".png"))) for f in files]
    for job in jobs:
        if job.src.exists() and job.dst.exists() and job.src.resolve() == job.dst.resolve():
            raise MCANError(f"{job.dst}: output path equals its input; choose another -o")
    dsts = [j.dst for j in jobs]
    dupes = sorted({str(d) for d in dsts if dsts.count(d) > 1})
    if dupes:
        raise MCANError(f"two inputs would write the same output {dupes[0]}; upscale them into separate folders")
    return jobs
