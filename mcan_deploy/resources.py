"""What the package ships besides code: the phase plans and the bundled sample, found by name.

An installed wheel has no ``configs/`` or ``samples/`` folder beside it, so ``mcan-train --config
demo --data sample`` resolves built-in names here; a path that exists always wins over a name.
In a checkout ``configs/`` and ``samples/`` are links into this package.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from .errors import ConfigError

SAMPLE_NAMES = ("sample", "city100")  # --data names of the bundled City100 crops


def _root(name: str) -> Path:
    return Path(str(files("mcan_deploy") / name))


def plans_dir() -> Path:
    """The folder of the shipped plans (``study/`` holds the study's experiments and plans)."""
    return _root("plans")


@dataclass(frozen=True)
class PlanEntry:
    """A shipped plan: its name (``paper``, ``study/cpu/patch48``), file and first sentence."""

    name: str
    path: Path
    summary: str


def list_plans() -> list[PlanEntry]:
    """Every shipped plan, by name; experiment files of the study (no ``[model]``) are left out."""
    out = []
    for path in sorted(plans_dir().rglob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if "phases" not in data and "base" not in data:  # an experiment file of the study
            continue
        text = " ".join(str(data.get("description", "")).split())
        first = re.split(r"(?<!fig)(?<!sec)(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z(])", text)[0].rstrip(".")
        summary = first if len(first) <= 100 else first[:97].rsplit(" ", 1)[0] + " ..."
        out.append(PlanEntry(path.relative_to(plans_dir()).with_suffix("").as_posix(), path, summary))
    return out


def resolve_plan(name_or_path: str | Path) -> Path:
    """A plan file: the path if it exists, else the shipped plan of that name (``demo``,
    ``paper``, ``study/cpu/patch48``; ``.toml`` optional)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path).removesuffix(".toml")
    shipped = plans_dir() / f"{name}.toml"
    if shipped.is_file() and {"phases", "base"} & set(tomllib.loads(shipped.read_text(encoding="utf-8"))):
        return shipped
    names = ", ".join(p.name for p in list_plans() if "/" not in p.name)
    raise ConfigError(
        f"--config {name_or_path}: no such file and no shipped plan of that name; "
        f"shipped: {names} (mcan-train --list-plans shows all)"
    )


def sample_data() -> Path:
    """The bundled City100 crops (train/ and test/ of LR/HR pairs; MIT, see its LICENSE)."""
    return _root("samples") / "city100"


def sample_photo() -> Path:
    """The bundled full-size photo (a City100 LR image, 1218x870)."""
    return _root("samples") / "photo" / "city100_001_LR.png"


def resolve_data(name_or_path: str | Path) -> Path:
    """A dataset folder: the path if it exists, else ``sample`` for the bundled pairs."""
    path = Path(name_or_path)
    if path.exists() or str(name_or_path) not in SAMPLE_NAMES:
        return path  # a missing folder is reported by the data loader, naming it
    return sample_data()
