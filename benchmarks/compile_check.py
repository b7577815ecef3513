"""Compile every fused-kernel variant the GPU path launches for a CUDA target, on any machine.

    python benchmarks/compile_check.py [--arch 90] [--out DIR]

GPU time is scarce; a kernel that fails to compile, spills registers, runs out of shared memory
or is not software-pipelined should be found before a GPU session, not in it. Triton compiles
ahead of time without a GPU (its bundled ptxas). Each variant is compiled as the JIT would
specialise it on a channels_last map: channel strides of 1, other strides and pointers
divisible by 16. Reported per variant: registers, spills, shared memory, whether the tap loop
is pipelined (asynchronous copies) and which tensor-core instruction the products use.

Writes ``compile-sm<arch>-<date>.md`` and ``.json``; exit code 1 when a variant fails, spills or
exceeds the architecture's shared memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
TL_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def conv_variants() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, constexprs, launch options) of every conv3x3 launch the fused blocks make."""
    import torch

    from mcan_deploy.kernels.conv3x3 import Config, gpu_configs, pack

    # (layer, C_in, C_out, epilogue) as runners/fused.py calls them
    layers = [
        ("head", 3, 64, dict()),
        ("conv1", 64, 64, dict(RELU=True, SUMS=True)),
        ("conv2", 64, 64, dict(HAS_SCALE=True, HAS_RES=True)),  # the gate known before it (conv_sums)
        ("body", 64, 64, dict(HAS_RES=True)),
        ("tail", 64, 3, dict(HAS_RES=True, CLAMP=True)),
    ]
    out = []
    for dtype in ("bfloat16", "float16", "float32"):
        for layer, cin, cout, epi in layers:
            tuned = layer in ("conv1", "conv2", "body")  # the 64-channel convolutions: the chosen launch
            for cfg in gpu_configs(getattr(torch, dtype)) if tuned else (Config(),):
                packed = pack(torch.zeros(cout, cin, 3, 3), None, torch.float32, torch.device("cpu"))
                const: dict[str, Any] = dict(RELU=False, HAS_SCALE=False, HAS_RES=False, CLAMP=False, SUMS=False)
                const.update(epi)
                const.update(
                    _tma=cfg.tma,
                    CHECK=dtype == "float16",
                    LIMIT=3.0e38 if dtype != "float16" else 65504.0,
                    DOT=0,
                    I64=False,
                    K_CHUNKS=packed.k_chunks,
                    IM2COL=packed.im2col,
                    BLOCK_M=cfg.block_m,
                    BLOCK_N=packed.block_n,
                    BLOCK_K=packed.block_k,
                    ROWS=cfg.rows,
                    CACHE=cfg.cache,
                )
                name = f"conv3x3 {layer} {dtype} {cfg.describe()}"
                out.append(
                    (
                        name,
                        {**const, "_dtype": dtype, "_cin": cin, "_cout": cout},
                        dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                    )
                )
    return out


def compile_conv(const: dict[str, Any], options: dict[str, Any], arch: int) -> Any:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mcan_deploy.kernels.conv3x3 import _conv3x3_kernel
    from mcan_deploy.kernels.conv3x3_tma import conv3x3_tma_kernel

    dt = TL_DTYPE[const.pop("_dtype")]
    cin, cout = const.pop("_cin"), const.pop("_cout")
    tma = const.pop("_tma") and dt != "fp32" and not const["IM2COL"]  # as conv3x3 launches it
    fn = conv3x3_tma_kernel if tma else _conv3x3_kernel
    if tma:  # the map and the weights as TMA descriptors (conv3x3_tma.descriptors)
        for name in ("IM2COL", "ROWS", "CACHE"):
            const.pop(name)
        bm, bk, bn = const["BLOCK_M"], const["BLOCK_K"], const["BLOCK_N"]
        descs = {"XD": f"tensordesc<{dt}[1,1,{bm},{bk}]>", "WD": f"tensordesc<{dt}[{bk},{bn}]>"}
    else:
        descs = {}
    ptrs = {"X": dt, "WP": dt, "BIAS": "fp32", "RES": dt, "OUT": dt, "PART": "fp32", "FLAG": "i32", "SCALE": "fp32"}
    ones = {"sx_c": 1, "sr_c": 1, "so_c": 1}  # channels_last: what the JIT specialises
    const = {**const, **{k: v for k, v in ones.items() if k in fn.arg_names}}
    sig = {
        n: descs[n] if n in descs else f"*{ptrs[n]}" if n in ptrs else "constexpr" if n in const else "i32"
        for n in fn.arg_names
    }
    # 3-channel images (the head's input, the tail's residual and output) have strides of 3
    strides = [] if cin < 16 else ["sx_b", "sx_h", "sx_w"]
    strides += [] if cout < 16 else ["sr_b", "sr_h", "sr_w", "so_b", "so_h", "so_w"]
    div16 = [n for n in fn.arg_names if n in ptrs or n in strides]
    div16 += [n for n, c in (("CIN", cin), ("COUT", cout)) if c % 16 == 0 and n in fn.arg_names]  # as the JIT does
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
    return triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options=options,
    )


def ptxas_report(ptx: str, arch: int) -> dict[str, Any]:
    import triton

    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = next((p for p in (bindir / "ptxas-blackwell", bindir / "ptxas") if p.exists()), None)
    if ptxas is None:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        res = subprocess.run(
            [str(ptxas), f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v", f.name, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.unlink(f.name)
    text = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_bytes": int(spills.group(1)) + int(spills.group(2)) if spills else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100/H200)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows: list[dict[str, Any]] = []
    failed = False
    for name, const, options in conv_variants():
        t0 = time.perf_counter()
        row: dict[str, Any] = {"variant": name}
        try:
            k = compile_conv(dict(const), options, args.arch)
            gir = k.asm["ttgir"]
            row.update(
                seconds=round(time.perf_counter() - t0, 2),
                shared_bytes=k.metadata.shared,
                pipelined="async_copy_global_to_local" in gir or "async_tma_copy_global_to_local" in gir,
                loads="TMA"
                if "async_tma_copy_global_to_local" in gir
                else "cp.async"
                if "async_copy" in gir
                else "plain",
                input_through_registers="ttg.local_load" in gir,  # shared -> registers before the product
                mma="wgmma" if "warp_group_dot" in gir else "mma" if "ttg.dot" in gir or "#mma" in gir else "fma",
                **ptxas_report(k.asm["ptx"], args.arch),
            )
            limit = SHARED_LIMIT.get(args.arch, 99 * 1024)
            bad = row["shared_bytes"] > limit or (row.get("spill_bytes") or 0) > 0
            row["ok"] = not bad
        except Exception as exc:  # noqa: BLE001 - a variant that fails is the finding
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        failed |= not row["ok"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    import triton

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"compile-sm{args.arch}-{time.strftime('%Y%m%d')}"
    stem.with_suffix(".json").write_text(
        json.dumps({"triton": triton.__version__, "arch": args.arch, "rows": rows}, indent=1)
    )
    lines = [
        f"# Fused kernels compiled for sm_{args.arch} (Triton {triton.__version__}, no GPU needed)",
        "",
        "Specialised as the JIT specialises a channels_last map (channel strides 1, the rest divisible by 16).",
        "",
        "| variant | ok | registers | spill bytes | shared KB | pipelined | loads | input via registers | products | compile s (0: cached) |",
        "|---|---|---:|---:|---:|---|---|---|---|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | **no**: {r['error']} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['variant']} | {'yes' if r['ok'] else '**no**'} | {r.get('registers')} | {r.get('spill_bytes')} | "
            f"{r['shared_bytes'] / 1024:.0f} | {'yes' if r['pipelined'] else 'no'} | {r['loads']} | "
            f"{'yes' if r['input_through_registers'] else 'no'} | {r['mma']} | {r['seconds']} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"compile_check: {sum(r['ok'] for r in rows)}/{len(rows)} variants ok -> {stem}.md")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
