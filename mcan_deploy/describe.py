"""What a model file is, read from its metadata without running it: ``describe(path)``.

Like spandrel's model descriptor, it states what a caller needs before the first image: the
configuration, the blocks and their receptive-field margins, the back-ends and dtypes that can
run it here, whether tiling is exact, and the file's SHA-256. ``mcan-info`` prints it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .extras import installed


@dataclass(frozen=True)
class ModelInfo:
    """A model file's description (all plain data; ``as_dict`` is JSON-ready)."""

    path: str
    kind: str  # model, training checkpoint, block, onnx, openvino
    sha256: str
    config: dict[str, Any]  # ModelConfig fields: kind, n_blocks, n_resblocks, n_feats, reduction, ...
    blocks: tuple[int, int]  # the blocks [start, stop) of N this file holds
    block_radii: list[int]  # receptive-field radius of each block held (the tile margin, px)
    receptive_field: int  # of the blocks held, run one after the other (px, square)
    tiling: str  # how tiles stay exact
    backends: list[str]  # back-ends that can run it on this machine
    dtypes: list[str]  # compute precisions it can run in
    notes: dict[str, Any] = field(default_factory=dict)  # kind-specific: checkpoint position, int8 quality

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few lines for people."""
        c = self.config
        shape = (
            f"{c.get('kind', 'mcan')}: {c.get('n_blocks')} blocks x {c.get('n_resblocks')} RCAB x "
            f"{c.get('n_feats')} features"
        )
        lines = [
            f"{self.path}: {self.kind}, {shape}",
            f"  blocks {self.blocks[0] + 1}..{self.blocks[1]} of {c.get('n_blocks')}; receptive field "
            f"{self.receptive_field}x{self.receptive_field}, margins {self.block_radii} px a block",
            f"  tiling: {self.tiling}",
            f"  runs on: {', '.join(self.backends) or 'nothing installed here'}; dtypes: {', '.join(self.dtypes)}",
            f"  sha256: {self.sha256}",
        ]
        lines += [f"  {k}: {v}" for k, v in self.notes.items()]
        return "\n".join(lines)


def _radii(config: dict[str, Any], source: str, start: int, stop: int) -> list[int]:
    from .checkpoint import config_from_dict
    from .model import build_model, receptive_field

    model = build_model(config_from_dict(config, source))
    return [receptive_field(b) // 2 for b in list(model.blocks)[start:stop]]


def describe(path: str | Path, trust_pickle: bool = False) -> ModelInfo:
    """Describe a model file: ``model.safetensors`` (or a block, or a training checkpoint) from
    ``mcan-train``, ``.onnx`` or OpenVINO ``.xml`` from ``mcan-export``. Bad files raise the same
    one-line errors as loading them does."""
    from .io import file_sha256

    path = Path(path)
    suffix = path.suffix.lower()
    exact = "exact: global channel statistics summed over tiles, or the whole image in one call"
    if suffix == ".onnx":
        from .export.onnx import read_metadata

        meta = read_metadata(path)
        start, stop = meta["blocks"]
        radii = [int(r) for r in meta["block_radii"]]
        backends = ["onnxruntime"] if installed("onnxruntime") else []
        return ModelInfo(
            str(path),
            "onnx",
            file_sha256(path),
            dict(meta["model"]),
            (int(start), int(stop)),
            radii,
            2 * sum(radii) + 1,
            "per-tile channel statistics (approximate) when tiled; exact with --plan whole",
            backends,
            [str(meta["dtype"])],
            {"opset": meta.get("opset"), "source_sha256": meta.get("source_sha256")},
        )
    if suffix == ".xml":
        from .export.openvino import read_ir

        _, meta = read_ir(path)
        radii = [int(r) for r in meta["block_radii"]]
        ir_notes = _ir_notes(meta)
        return ModelInfo(
            str(path),
            "openvino",
            file_sha256(path),
            dict(meta["model"]),
            (0, int(meta["n_blocks"])),
            radii,
            2 * sum(radii) + 1,
            exact,
            ["openvino"],
            ["int8"] if meta.get("precision") == "int8" else ["fp32", "bf16"],
            ir_notes,
        )
    from .checkpoint import is_safetensors, load_tensors

    if path.is_file() and not is_safetensors(path):
        from .checkpoint import config_to_dict, load_model

        # refused (a pickle without trust_pickle, a corrupt file) with load_model's own message
        config = config_to_dict(load_model(path, trust_pickle=trust_pickle).config)
        meta, kind = {"model": config}, "model (pickle, tensors only)"
    else:
        _, meta = load_tensors(path)
        if "model" not in meta:
            raise CheckpointError(f"{path}: holds no model config; is it an mcan-deploy model file?")
        kind = "training checkpoint" if "position" in meta else "block" if "block" in meta else "model"
    config = dict(meta["model"])
    n = int(config.get("n_blocks", 1))
    if kind == "block":
        start, stop = int(meta["block"]) - 1, int(meta["block"])
    else:
        start, stop = 0, n
    radii = _radii(config, str(path), start, stop)
    notes: dict[str, Any] = {}
    if "position" in meta:
        notes["position"] = meta["position"]
    if "plan" in meta:
        notes["phases"] = meta["plan"]
    local = config.get("kind") == "toy"
    backends = (
        ["torch"]
        + (["openvino"] if installed("openvino") else [])
        + (["triton (the fused inference RCAB, on CUDA)"] if installed("triton") and not local else [])
    )
    return ModelInfo(
        str(path),
        kind,
        file_sha256(path),
        config,
        (start, stop),
        radii,
        2 * sum(radii) + 1,
        "exact: the model is local (no channel attention)" if local else exact,
        backends,
        ["float32", "bfloat16", "float16"],
        notes,
    )


def _ir_notes(meta: dict[str, Any]) -> dict[str, Any]:
    """What an IR file's metadata says beyond its shape: precision, source, the int8 gate's
    verdict and what ``--precision auto`` chose."""
    ir_notes: dict[str, Any] = {k: meta[k] for k in ("precision", "source_sha256") if k in meta}
    if "int8" in meta:  # the gate's verdict, on pairs it did not tune on
        q = meta["int8"]
        ir_notes["int8 gate"] = f"keeps {100 * q['retention']:.1f}% of the gain on {q['pairs']} pairs" + (
            f", lower bound {100 * q['bound']:.1f}%, worst image {q['worst_image']} "
            f"{100 * q['worst_retention']:.1f}% (recipe '{q['recipe']}', bar {q['min_retention']})"
            if "bound" in q
            else " it was tuned on (an earlier gate: no bound; export it again)"
        )
    if "auto" in meta:
        ir_notes["precision auto"] = meta["auto"]["why"]
    return ir_notes
