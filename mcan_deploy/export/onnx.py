"""ONNX export of N (or of single blocks, for block-by-block tiling), checked before it is kept.

Each file has dynamic batch, height and width, and carries metadata that lets the tiling engine
run it with no PyTorch model at hand: the model config, the blocks it covers, each block's
receptive-field radius (the tile margin), the opset and a SHA-256 of the source weights.
Every export is verified: ``onnx.checker``, then ONNX Runtime against PyTorch at two input
sizes; a failed check deletes the file and says which output differed and by how much.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..checkpoint import config_to_dict
from ..errors import MCANError
from ..io import atomic_write_bytes
from ..model import MCAN, receptive_field, set_rcab_impl

log = logging.getLogger(__name__)

META_KEY = "mcan_deploy"
DEFAULT_OPSET = 18
CHECK_SIZES = ((37, 53), (64, 48))  # two sizes, odd ones included
TOLERANCE = {"float32": 1e-4, "float16": 2e-2}


class ExportError(MCANError):
    """An export failed or did not match PyTorch."""


class _Blocks(nn.Module):
    """Blocks [start, stop) of N as one module, clamped as N_i+ unless told otherwise."""

    def __init__(self, model: MCAN, start: int, stop: int, clamp: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(model.blocks[start:stop])
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, clamp=self.clamp)
        return x


@dataclass(frozen=True)
class ExportedFile:
    """One written and verified ONNX file."""

    path: Path
    blocks: tuple[int, int]  # [start, stop), 0-based
    max_abs_error: float


def onnx_metadata(
    model: MCAN, start: int, stop: int, opset: int, dtype: str, clamp: bool, source_hash: str
) -> dict[str, object]:
    radii = [receptive_field(b) // 2 for b in model.blocks[start:stop]]
    return {
        "format": "mcan-deploy-onnx/1",
        "model": config_to_dict(model.config),
        "blocks": [start, stop],
        "n_blocks": len(model.blocks),
        "block_radii": radii,
        "receptive_field": 2 * sum(radii) + 1,
        "opset": opset,
        "dtype": dtype,
        "clamp": clamp,
        "source_sha256": source_hash,
    }


# ONNX files are checked before any runtime parses them for tensors: this many bytes at most,
# the file and its external-data files together (mcan-export writes tens of MB).
MAX_ONNX_BYTES = 2**31


def _all_tensors(proto) -> Iterator:
    """Every TensorProto of a model: initializers, tensor attributes, subgraphs, functions."""

    def graph_tensors(g):
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        yield from node_tensors(g.node)

    def node_tensors(nodes):
        for node in nodes:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for sp in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                    yield sp.values
                    yield sp.indices
                if a.HasField("g"):
                    yield from graph_tensors(a.g)
                for g in a.graphs:
                    yield from graph_tensors(g)

    yield from graph_tensors(proto.graph)
    for f in proto.functions:
        yield from node_tensors(f.node)
    for info in proto.training_info:
        for g in (info.initialization, info.algorithm):
            yield from graph_tensors(g)


def check_external_data(proto, path: Path, max_bytes: int = MAX_ONNX_BYTES) -> None:
    """Refuse external-data references that leave the model's folder (absolute paths, '..',
    links pointing out: the path-traversal class of ONNX loader bugs), point at missing files or
    past their end, or add up to more than ``max_bytes`` with the model file."""
    import onnx

    # runtimes join locations to the folder of the path as given (a link to the model is not
    # followed first), so that folder, resolved, is what every target must stay inside
    base = path.absolute().parent
    folder = base.resolve()
    total = path.stat().st_size
    for t in _all_tensors(proto):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        try:
            target = (base / loc).resolve()
            inside = bool(loc) and not Path(loc).is_absolute() and "\\" not in loc and target.is_relative_to(folder)
            exists = inside and target.is_file()
            file_size = target.stat().st_size if exists else 0
            offset, length = int(info.get("offset", 0)), int(info.get("length", file_size))
        except (OSError, ValueError):  # a NUL byte in the name, no permission, a malformed number
            raise ExportError(f"{path}: tensor '{t.name}' has unusable external-data fields; refused") from None
        if not inside:
            raise ExportError(
                f"{path}: tensor '{t.name}' points its external data at {loc!r}, outside "
                f"the model's folder {folder}; refused"
            )
        if not exists:
            raise ExportError(f"{path}: tensor '{t.name}' needs external data {loc!r}, which is missing")
        if offset < 0 or length < 0 or offset + length > file_size:
            raise ExportError(
                f"{path}: tensor '{t.name}' reads bytes {offset}..{offset + length} of "
                f"{loc!r}, which holds {file_size}; refused"
            )
        total += length
    if total > max_bytes:
        raise ExportError(
            f"{path}: model and external data hold {total} bytes, above the limit of {max_bytes}; refused"
        )


def read_metadata(path: str | Path, max_bytes: int = MAX_ONNX_BYTES) -> dict[str, Any]:
    """The mcan-deploy metadata of an ONNX file; ``ExportError`` if it is not one of ours, is
    larger than ``max_bytes`` or has external data outside its folder (checked before any
    runtime loads it)."""
    import onnx

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file") from None
    except OSError as exc:
        raise ExportError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size > max_bytes:
        raise ExportError(f"{path}: {size} bytes, above the limit of {max_bytes} for an ONNX file; refused")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends for corrupt files
        raise ExportError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})"[:400]) from None
    check_external_data(proto, path, max_bytes)
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise ExportError(f"{path}: ONNX file without mcan-deploy metadata; export it with mcan-export")
    try:
        meta = json.loads(props[META_KEY])
        if not isinstance(meta, dict) or not {"n_blocks", "blocks", "block_radii", "model", "dtype"} <= set(meta):
            raise ValueError("keys missing")
    except ValueError as exc:
        raise ExportError(f"{path}: malformed mcan-deploy metadata ({exc}); re-export with mcan-export") from None
    return meta


def _export_one(module: nn.Module, opset: int) -> bytes:
    import onnx

    dim = torch.export.Dim.DYNAMIC
    example = torch.rand(1, 3, 32, 32, dtype=next(module.parameters()).dtype)
    # torch.onnx's notes on torchvision ops MCAN never uses, onnx_ir's per-initializer INFO lines
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=["output"],
            dynamic_shapes={"x": {0: dim, 2: dim, 3: dim}},
            external_data=False,
            optimize=True,
            verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; one message names them
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {type(exc).__name__}: {exc}"[:500]) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    model_proto = getattr(program, "model_proto", None)  # an ONNXProgram (the property serializes: read it once)
    if model_proto is not None:
        return model_proto.SerializeToString()
    return onnx.load_from_string(cast(bytes, program)).SerializeToString()  # an exporter that returned the bytes


def _verify(path: Path, module: nn.Module, dtype: str, shown: Path) -> float:
    """onnx.checker, then ONNX Runtime against PyTorch at two sizes; returns the max error.
    ``shown`` is the name the file will have, for messages."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    tol = TOLERANCE[dtype]
    gen = torch.Generator().manual_seed(0)
    for h, w in CHECK_SIZES:
        x = torch.rand(2, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = module(x).float().numpy()
        feed = x.numpy().astype(np.float16 if dtype == "float16" else np.float32)
        got = sess.run(None, {sess.get_inputs()[0].name: feed})[0].astype(np.float32)
        err = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        worst = max(worst, err)
        if not err <= tol:
            raise ExportError(
                f"{shown}: ONNX Runtime output 'output' differs from PyTorch at {w}x{h}: max abs error "
                f"{err:.3g} > {tol:g} ({dtype}); nothing was written"
            )
    return worst


def export_onnx(
    model: MCAN,
    out: str | Path,
    blocks: str = "all",
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    clamp: bool = True,
    source_hash: str = "",
) -> list[ExportedFile]:
    """Export N (``blocks='all'``) or the listed 1-based blocks ("1,2,3": one file each, named
    ``<stem>.N<i>.onnx``) to ONNX, verifying every file before it is kept."""
    import onnx

    out = Path(out)
    n = len(model.blocks)
    if blocks == "all":
        ranges = [(0, n, out)]
    else:
        try:
            idx = sorted({int(b) for b in blocks.split(",")})
        except ValueError:
            raise ExportError(f"--blocks {blocks!r}: give 'all' or block numbers like 1,2,3") from None
        if not idx or idx[0] < 1 or idx[-1] > n:
            raise ExportError(f"--blocks {blocks!r}: blocks are numbered 1..{n}")
        ranges = [(i - 1, i, out.with_name(f"{out.stem}.N{i}{out.suffix or '.onnx'}")) for i in idx]
    import copy
    import os

    dtype = "float16" if fp16 else "float32"
    # a copy: the caller's model keeps its dtype, mode and RCAB path; ONNX gets the torch path
    model = set_rcab_impl(copy.deepcopy(model).float().eval(), "torch")
    checked: list[tuple[Path, Path, tuple[int, int], float]] = []
    try:
        for start, stop, path in ranges:
            ref_module = _Blocks(model, start, stop, clamp).eval()
            module = copy.deepcopy(ref_module).half() if fp16 else ref_module
            proto = onnx.load_from_string(_export_one(module, opset))
            actual = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
            if actual != opset:
                log.warning(
                    "opset %d requested, the exporter produced opset %d; the file says %d", opset, actual, actual
                )
            meta = onnx_metadata(model, start, stop, actual, dtype, clamp, source_hash)
            entry = proto.metadata_props.add()
            entry.key, entry.value = META_KEY, json.dumps(meta)
            proto.doc_string = f"MCAN blocks {start + 1}..{stop} exported by mcan-deploy"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.onnx")
            checked.append((tmp, path, (start, stop), 0.0))
            atomic_write_bytes(tmp, proto.SerializeToString())
            err = _verify(tmp, _HalfReference(module) if fp16 else ref_module, dtype, shown=path)
            checked[-1] = (tmp, path, (start, stop), err)
            log.info(
                "checked %s (blocks %d..%d, %s, opset %d): ONNX Runtime matches PyTorch, max abs error %.2g",
                path,
                start + 1,
                stop,
                dtype,
                actual,
                err,
            )
        for tmp, path, _, _ in checked:  # every file passed: only now replace what was there
            os.replace(tmp, path)
    finally:
        for tmp, _, _, _ in checked:
            tmp.unlink(missing_ok=True)
    return [ExportedFile(path, rng, err) for _, path, rng, err in checked]


class _HalfReference(nn.Module):
    """PyTorch reference for a float16 export: the float16 module, fed float16, returning float32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def float(self) -> _HalfReference:  # the reference stays in float16
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()
