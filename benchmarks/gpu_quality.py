"""How much of float32's gain each dtype and plan keeps on the GPU, on a model trained there.

    python benchmarks/gpu_quality.py --out DIR [--smoke] [--seconds S]

Trains the shipped ``demo`` plan on the bundled sample (``mcan-train --config demo --data sample``,
bf16 steps captured in CUDA graphs), then runs its test pairs through the tiling engine on the
fused path in float32, bfloat16 and float16, whole and with exact tiles (and the eager path as a
second float32), and reports PSNR, the gain over the identity and each one's share of the fused
float32 gain (``quality.measure``). A random-weight model's max difference says little; a
trained model's kept gain is what a user sees.

``--smoke`` trains a few iterations on the CPU (the script, not the numbers).
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

try:  # run as a script (python benchmarks/gpu_quality.py) or imported from the package
    from engine_check import REPO
    from gpu_results import Results, start
except ImportError:
    from benchmarks.engine_check import REPO
    from benchmarks.gpu_results import Results, start

log = logging.getLogger("gpu_quality")

# --smoke: the demo plan's phases at a size the CPU check runs in seconds
SMOKE_PLAN = """
[model]
n_blocks = 2
n_resblocks = 1
n_feats = 8
[data]
patch_size = 24
batch_size = 4
[train]
seed = 0
val_every = 4
checkpoint_every = 4
strip_size = 32
[[phases]]
name = "1"
kind = "train_block"
block = 1
init = "orthogonal"
[[phases.stages]]
name = "adam"
optimizer = "adam"
iters = [3]
lr = [1e-4]
[[phases]]
name = "1-2"
kind = "generate"
block = 1
[[phases]]
name = "2"
kind = "train_block"
block = 2
init = "inherit"
[[phases.stages]]
name = "adam"
optimizer = "adam"
iters = [3]
lr = [1e-4]
"""


def quality(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    from mcan_deploy.backend_quality import gate_figures
    from mcan_deploy.checkpoint import load_model
    from mcan_deploy.cli.train import main as train_main
    from mcan_deploy.data import PairedImages, load_images, split_dirs
    from mcan_deploy.gate.precision import BF16_BAR
    from mcan_deploy.quality import measure, outputs
    from mcan_deploy.resources import sample_data
    from mcan_deploy.runners import TorchRunner, TritonRunner
    from mcan_deploy.tiling import TileConfig

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "demo"
        plan = "demo"
        if args.smoke:
            plan = str(Path(tmp) / "smoke.toml")
            Path(plan).write_text(SMOKE_PLAN)
        argv = ["--config", plan, "--data", "sample", "--out", str(run), "--no-progress", "--device", str(device)]
        argv += [] if args.smoke else ["--cuda-graphs"]
        t0 = time.perf_counter()
        rc = train_main(argv)
        train_s = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"gpu_quality: mcan-train exited {rc}")
        model = load_model(run / "model.safetensors").eval()
    test = load_images(split_dirs(sample_data())[1], progress=False)
    if args.smoke:  # Triton's interpreter: one 32 px crop
        test = PairedImages(test.names[:1], [test.inputs[0][:, :32, :32]], [test.targets[0][:, :32, :32]])
    section: dict[str, Any] = {"train_s": train_s, "pairs": len(test), "rows": []}
    res.put("quality", section)
    deadline = time.monotonic() + args.seconds
    named: dict[str, list[torch.Tensor]] = {}
    cases = [("fused", "float32", "whole"), ("fused", "bfloat16", "whole"), ("fused", "float16", "whole")]
    cases += [("fused", "bfloat16", "layers"), ("fused", "float16", "layers"), ("torch", "float32", "whole")]
    cases += [("torch", "bfloat16", "whole")]
    for rcab, dtype, plan in cases:
        if time.monotonic() > deadline:
            log.warning("quality: time limit; %s %s %s not measured", rcab, dtype, plan)
            continue
        cls = TritonRunner if rcab == "fused" else TorchRunner
        runner = cls(copy.deepcopy(model), device, getattr(torch, dtype))
        cfg = TileConfig(tile=64 if plan == "layers" else 512, plan=plan)
        named[f"{rcab} {dtype} {plan}"] = [o.cpu() for o in outputs(runner, test.to(device), cfg)]
        rows = measure(named, test, "fused float32 whole")
        section["rows"] = [r.as_dict() for r in rows]
        for row in section["rows"]:  # the gate's bound and worst image, at bf16's 97% bar
            if row["name"] in named and row["name"] != "fused float32 whole":
                row.update(gate_figures(test, named["fused float32 whole"], named[row["name"]], BF16_BAR))
        res.put("quality", section)
        log.info("quality %s", section["rows"][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--smoke", action="store_true", help="a few iterations on the CPU: checks the script only")
    p.add_argument(
        "--seconds", type=float, default=30, help="start no new measurement after this long (after training)"
    )
    args = p.parse_args()
    device, res = start("gpu_quality", args)
    quality(args, device, res)


if __name__ == "__main__":
    main()
