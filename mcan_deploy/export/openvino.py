"""N as an OpenVINO model: every block whole, and every layer step the exact tiler needs.

One ``ov.Model`` holds, for each block i (1-based names):

- ``N<i>``: the block N_i+ (or N_i) on an image, for whole-image and tile-statistics runs, and
  ``N``: all blocks in one graph (one set of OpenVINO buffers for a whole image, not one a block);
- ``N<i>.head``, ``N<i>.r<k>`` (RCAB k's residual conv2(relu(conv1(h)))), ``N<i>.g<k>`` (its
  channel-attention gate from the pooled means) and ``N<i>.finish`` (body conv, long skip, tail,
  plus the input): the layer steps of the exact ``global`` statistics mode, which pools each
  RCAB's means over the whole image between two steps.

Every step is a separate output with its own named inputs, so a runner compiles each as a
sub-model, and one NNCF call quantizes all of them with consistent calibration data. The graph is
converted from the PyTorch modules of ``model.py`` (nothing is re-implemented here). IR files
carry the same metadata as the ONNX files (model config, blocks, receptive-field radii,
precision, source hash) in the model's ``rt_info``.

OpenVINO is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..checkpoint import config_to_dict
from ..errors import OpenVINOError
from ..model import MCAN, RCAB, MCANBlock, receptive_field

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)

META_KEY = "mcan_deploy"
FORMAT = "mcan-deploy-openvino/1"


def require_openvino(what: str) -> None:
    """``OpenVINOError`` naming the install command if the openvino package is missing."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise OpenVINOError(f"{what} needs OpenVINO: pip install 'mcan-deploy[openvino]'")


@dataclass(frozen=True)
class Piece:
    """One compiled unit: an output name and the names of the inputs it reads."""

    name: str
    inputs: tuple[str, ...]


def pieces(model: MCAN) -> list[Piece]:
    """Every output of the OpenVINO model of ``model``, in output order."""
    out = []
    for i, block in enumerate(model.blocks, 1):
        b = f"N{i}"
        out.append(Piece(b, (f"{b}.x",)))
        if isinstance(block, MCANBlock):
            out.append(Piece(f"{b}.head", (f"{b}.x",)))
            for k in range(len(block.body)):
                out.append(Piece(f"{b}.r{k}", (f"{b}.h{k}",)))
                out.append(Piece(f"{b}.g{k}", (f"{b}.m{k}",)))
            out.append(Piece(f"{b}.finish", (f"{b}.x", f"{b}.h")))
    if len(model.blocks) > 1:  # all of N in one graph: one set of buffers for a whole image
        out.append(Piece("N", ("N1.x",)))
    return out


def input_names(model: MCAN) -> list[str]:
    """The model's inputs in order of first use (the order of the converted graph's parameters)."""
    seen: dict[str, None] = {}
    for p in pieces(model):
        seen.update(dict.fromkeys(p.inputs))
    return list(seen)


class _Steps(nn.Module):
    """Every piece of N as one module with one argument per input name (for conversion)."""

    def __init__(self, model: MCAN, clamp: bool) -> None:
        super().__init__()
        self.model = model
        self.clamp = clamp
        self.pieces = pieces(model)
        self.inputs = input_names(model)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = dict(zip(self.inputs, args))
        outs = []
        for p in self.pieces:
            x = [feed[n] for n in p.inputs]
            if p.name == "N":
                outs.append(self.model(x[0], clamp=self.clamp))
                continue
            block_name, _, step = p.name.partition(".")
            block = self.model.blocks[int(block_name[1:]) - 1]
            mcan_block = cast(MCANBlock, block)  # pieces() names layer steps of MCAN blocks only
            if not step:
                outs.append(block(x[0], clamp=self.clamp))
            elif step == "head":
                outs.append(mcan_block.head(x[0]))
            elif step == "finish":
                outs.append(mcan_block.finish(x[0], x[1], clamp=self.clamp))
            elif step[0] == "r":
                outs.append(cast(RCAB, mcan_block.body[int(step[1:])]).residual(x[0]))
            else:
                outs.append(cast(RCAB, mcan_block.body[int(step[1:])]).ca.scale(x[0]))
        return tuple(outs)


def _example_shape(name: str, cfg: Any, side: int) -> tuple[int, ...]:
    step = name.partition(".")[2]
    if step == "x":
        return (1, cfg.n_colors, side, side)
    if step.startswith("m"):
        return (1, cfg.n_feats, 1, 1)
    return (1, cfg.n_feats, side, side)


def metadata(model: MCAN, precision: str, clamp: bool, source_hash: str, **extra: Any) -> dict[str, Any]:
    radii = [receptive_field(b) // 2 for b in model.blocks]
    return {
        "format": FORMAT,
        "model": config_to_dict(model.config),
        "blocks": [0, len(model.blocks)],
        "n_blocks": len(model.blocks),
        "block_radii": radii,
        "receptive_field": 2 * sum(radii) + 1,
        "precision": precision,
        "clamp": clamp,
        "source_sha256": source_hash,
        "pieces": [[p.name, list(p.inputs)] for p in pieces(model)],
        **extra,
    }


def to_openvino(model: MCAN, clamp: bool = True, source_hash: str = "") -> ov.Model:
    """Convert N (float32, torch RCAB path) into the OpenVINO model of every piece, with its
    metadata; dynamic batch, height and width."""
    import copy

    from ..telemetry import import_openvino

    ov = import_openvino()

    from ..model import set_rcab_impl

    model = set_rcab_impl(copy.deepcopy(model).float().eval(), "torch")
    steps = _Steps(model, clamp).eval()
    cfg = model.config
    example = tuple(torch.rand(_example_shape(n, cfg, 16)) for n in steps.inputs)
    shapes = [
        ov.PartialShape([-1, s[1], 1, 1] if s[2] == 1 else [-1, s[1], -1, -1]) for s in (t.shape for t in example)
    ]
    try:
        with torch.no_grad():
            ov_model = ov.convert_model(steps, example_input=example, input=shapes)
    except Exception as exc:  # noqa: BLE001 - the converter raises its own error classes
        raise OpenVINOError(f"OpenVINO conversion failed: {type(exc).__name__}: {exc}"[:500]) from None
    for param, name in zip(ov_model.get_parameters(), steps.inputs):
        param.set_friendly_name(name)
        param.output(0).get_tensor().set_names({name})
    for out, p in zip(ov_model.outputs, steps.pieces):
        out.get_tensor().set_names({p.name})
        out.get_node().set_friendly_name(p.name)
    set_metadata(ov_model, metadata(model, "fp32", clamp, source_hash))
    return ov_model


def set_metadata(ov_model: ov.Model, meta: dict[str, Any]) -> None:
    ov_model.set_rt_info(json.dumps(meta), [META_KEY])


def get_metadata(ov_model: ov.Model, source: str | Path) -> dict[str, Any]:
    """The mcan-deploy metadata of an OpenVINO model; ``OpenVINOError`` naming ``source``."""
    if not ov_model.has_rt_info([META_KEY]):
        raise OpenVINOError(
            f"{source}: OpenVINO model without mcan-deploy metadata; export it with mcan-export --format openvino"
        )
    try:
        meta = json.loads(ov_model.get_rt_info([META_KEY]).astype(str))
        if (
            not isinstance(meta, dict)
            or meta.get("format") != FORMAT
            or not {"n_blocks", "block_radii", "model", "precision", "pieces"} <= set(meta)
        ):
            raise ValueError("keys missing or another format")
    except ValueError as exc:
        raise OpenVINOError(
            f"{source}: malformed mcan-deploy metadata ({exc}); re-export with mcan-export --format openvino"
        ) from None
    return meta


def read_ir(path: str | Path) -> tuple[ov.Model, dict[str, Any]]:
    """An IR file (``.xml`` with its ``.bin``) and its metadata."""
    from ..telemetry import import_openvino

    ov = import_openvino()

    path = Path(path)
    if not path.is_file():
        raise OpenVINOError(f"{path}: no such file")
    if not path.with_suffix(".bin").is_file():
        raise OpenVINOError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it")
    try:
        ov_model = ov.Core().read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own error classes
        raise OpenVINOError(f"{path}: not a readable OpenVINO IR ({type(exc).__name__}: {exc})"[:400]) from None
    return ov_model, get_metadata(ov_model, path)


def write_ir(ov_model: ov.Model, path: str | Path) -> None:
    """Write ``path`` (.xml) and its .bin so that a reader never sees one without the other:
    both go to temporary names first, then the .bin and the .xml are renamed in that order."""
    from ..telemetry import import_openvino

    ov = import_openvino()

    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise OpenVINOError(f"-o {path}: an OpenVINO IR file ends in .xml")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.xml")
    try:
        ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    except OSError as exc:
        raise OpenVINOError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)


def default_cache_dir() -> Path:
    """Where converted and compiled OpenVINO models are kept: ``$MCAN_DEPLOY_CACHE``, else
    ``$XDG_CACHE_HOME/mcan-deploy``, else ``~/.cache/mcan-deploy``."""
    if os.environ.get("MCAN_DEPLOY_CACHE"):
        return Path(os.environ["MCAN_DEPLOY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mcan-deploy"


def model_for_openvino(
    path: str | Path, cache_dir: Path, trust_pickle: bool = False
) -> tuple[ov.Model, dict[str, Any]]:
    """The OpenVINO model of a file: an IR file as it is; a model file from ``mcan-train``
    converted in memory, the conversion kept in ``cache_dir`` under the file's SHA-256 (and the
    OpenVINO and mcan-deploy versions), so the next run reads it instead of converting."""
    from ..telemetry import import_openvino

    ov = import_openvino()

    from .._version import __version__
    from ..checkpoint import load_model
    from ..io import file_sha256

    path = Path(path)
    if path.suffix.lower() == ".xml":
        return read_ir(path)
    model = load_model(path, trust_pickle=trust_pickle)  # names the file if it is missing or bad
    digest = file_sha256(path)
    cached = cache_dir / "ir" / f"{digest[:32]}-ov{ov.get_version().split('-')[0]}-mcan{__version__}.xml"
    if cached.is_file():
        try:
            ov_model, meta = read_ir(cached)
            if meta.get("source_sha256") == digest:
                log.debug("OpenVINO model of %s from the cache %s", path, cached)
                return ov_model, meta
        except OpenVINOError as exc:
            log.warning("ignoring a broken cache entry (%s); converting again", exc)
    ov_model = to_openvino(model, source_hash=digest)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_ir(ov_model, cached)
    except (OSError, OpenVINOError) as exc:
        log.warning("cannot cache the converted model in %s (%s); the next run converts again", cache_dir, exc)
    return ov_model, get_metadata(ov_model, path)
