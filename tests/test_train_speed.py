"""Training speed options (issue 18): each one's step against a plain float32 PyTorch step,
bitwise resume under them, and the combinations that are refused.

The reference is written out here with torch.optim's for-loop optimisers and F.l1_loss, not
through ``TrainStep``. Tolerances, measured on one block of 2 RCABs and 16 features:
- float32 options (channels_last, foreach, fused) differ from the reference only in summation
  order: losses and the weight update after 3 steps within 1e-5 relative (measured <= 1.3e-6);
- bf16 autocast rounds every convolution's inputs to 8 mantissa bits: the first gradient within
  3e-2 relative (L2), losses within 5e-3, and the 3-step update within 0.3 (Adam, whose first
  steps are sign-like and amplify the rounding of small gradients; measured 0.14) or 0.1
  (Adadelta; measured 0.033) relative. bf16 must also differ from float32 at all (it is in use).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from mcan_deploy.checkpoint import load_tensors
from mcan_deploy.cli import train as train_cli
from mcan_deploy.config import ModelConfig, StageConfig, TrainConfig, plan_from_dict
from mcan_deploy.errors import ConfigError
from mcan_deploy.model import build_model, init_block
from mcan_deploy.train import TrainingInterrupted, train
from mcan_deploy.train.step import StepOptions, TrainStep, make_optimizer, resolve_precision, set_lr
from mcan_deploy.train.validate import val_batches as _batches

from .helpers import tiny_plan_dict

OPTIONS = {
    "channels_last": StepOptions(channels_last=True),
    "foreach": StepOptions(optimizer_impl="foreach"),
    "auto_optimizer": StepOptions(optimizer_impl="auto"),  # fused Adam, foreach Adadelta
    "bf16": StepOptions(precision="bf16"),
    "bf16_channels_last_auto": StepOptions("bf16", True, "auto"),  # the default on a bf16 CPU
}


def _flat(module: torch.nn.Module, grads: bool = False) -> torch.Tensor:
    return torch.cat([(p.grad if grads else p).detach().flatten() for p in module.parameters()])


@pytest.fixture(scope="module")
def block_and_batches():
    model = build_model(ModelConfig(n_blocks=1, n_resblocks=2, n_feats=16))
    block = model.blocks[0]
    init_block(block, "orthogonal", torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(4, 3, 24, 24, generator=g), torch.rand(4, 3, 24, 24, generator=g)) for _ in range(3)]
    return block, batches


def _reference(block, batches, optimizer: str, lr: float):
    """Plain float32 eager training: torch.optim's for-loop optimiser, F.l1_loss."""
    ref = copy.deepcopy(block)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(ref.parameters(), lr=lr, foreach=False)
    else:
        opt = torch.optim.Adadelta(ref.parameters(), lr=lr, rho=0.9, eps=1e-8, foreach=False)
    losses, first_grad = [], None
    for x, y in batches:
        loss = F.l1_loss(ref(x, clamp=True), y)
        opt.zero_grad()
        loss.backward()
        first_grad = _flat(ref, grads=True) if first_grad is None else first_grad
        opt.step()
        losses.append(loss.item())
    return ref, losses, first_grad


def _reference_bf16(block, batches, optimizer: str, lr: float):
    """Plain bf16 autocast training as PyTorch documents it: the forward under torch.autocast,
    the loss on the float32 output, for-loop optimiser."""
    ref = copy.deepcopy(block)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(ref.parameters(), lr=lr, foreach=False)
    else:
        opt = torch.optim.Adadelta(ref.parameters(), lr=lr, rho=0.9, eps=1e-8, foreach=False)
    losses = []
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ref(x, clamp=True)
        loss = F.l1_loss(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return ref, losses


@pytest.mark.parametrize("optimizer,lr", [("adam", 1e-3), ("adadelta", 1.0)])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_step_matches_the_float32_eager_step(block_and_batches, name, optimizer, lr):
    block, batches = block_and_batches
    opts = OPTIONS[name]
    ref, ref_losses, ref_grad = _reference(block, batches, optimizer, lr)
    model = copy.deepcopy(block)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    stage = StageConfig(name="s", optimizer=optimizer, iters=[3], lr=[lr])
    step = TrainStep(lambda x: model(x, clamp=True), make_optimizer(model.parameters(), stage, opts.optimizer_impl),
                     F.l1_loss, opts)  # fmt: skip
    losses, grad = [], None
    for x, y in batches:
        loss = step(x, y)
        assert loss.dtype == torch.float32
        losses.append(loss.item())
        grad = _flat(model, grads=True) if grad is None else grad
    w0, want, got = _flat(block), _flat(ref), _flat(model)
    update_err = float(((got - w0) - (want - w0)).norm() / (want - w0).norm())
    loss_err = max(abs(a - b) / b for a, b in zip(losses, ref_losses))
    grad_err = float((grad - ref_grad).norm() / ref_grad.norm())
    if opts.precision == "fp32":
        assert loss_err < 1e-5 and update_err < 1e-5 and grad_err < 1e-5, (loss_err, update_err, grad_err)
    else:
        assert 0 < loss_err < 5e-3, f"bf16 loss off by {loss_err:.2e} (0: autocast not in use)"
        assert grad_err < 3e-2, f"bf16 first gradient off by {grad_err:.3f}"
        assert update_err < (0.3 if optimizer == "adam" else 0.1), f"bf16 3-step update off by {update_err:.3f}"
    if opts.channels_last:  # the optimiser state follows the parameters' layout
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
        for p in model.parameters():
            for k, v in step.optimizer.state[p].items():
                assert v.dim() == 0 or v.stride() == p.stride(), (k, v.stride(), p.stride())
    if opts.precision == "bf16":  # against plain bf16 autocast of the same step: only the layout may differ
        ref16, losses16 = _reference_bf16(block, batches, optimizer, lr)
        w16 = _flat(ref16)
        err16 = float(((got - w0) - (w16 - w0)).norm() / (w16 - w0).norm())
        if not opts.channels_last and opts.optimizer_impl == "for_loop":
            assert losses == losses16 and torch.equal(got, w16), "the same ops as plain autocast: bitwise"
        else:
            assert max(abs(a - b) / b for a, b in zip(losses, losses16)) < 1e-3 and err16 < 0.1, err16


def _interrupted_then_resumed(plan, sample_dir, out, stop_after: int, resume_plan=None):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] == stop_after

    with pytest.raises(TrainingInterrupted):
        train(plan, sample_dir, out, device="cpu", progress=False, should_stop=stop)
    train(resume_plan or plan, sample_dir, out, device="cpu", progress=False)
    return load_tensors(out / "model.safetensors")[0]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_run_in_the_default_options_resumes_bitwise(precision, sample_dir, tmp_path):
    """channels_last with fused Adam and foreach Adadelta: checkpoints are written contiguous, and
    the resumed optimiser state must take the parameters' layout again (fused and foreach
    optimisers pair elements by memory order: before that was fixed this run differed by 0.07)."""
    data = tiny_plan_dict()
    data["train"].update(precision=precision, channels_last=True, optimizer_impl="auto", checkpoint_every=0)
    plan = plan_from_dict(data)
    got = _interrupted_then_resumed(plan, sample_dir, tmp_path / "resumed", stop_after=6)  # inside stage adam
    train(plan, sample_dir, tmp_path / "whole", device="cpu", progress=False)
    want, _ = load_tensors(tmp_path / "whole" / "model.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want), "a resumed run equals an uninterrupted one bitwise"
    assert all(v.is_contiguous() for v in got.values()), "model files are written contiguous"


def test_a_run_resumes_across_a_precision_change(sample_dir, tmp_path):
    data = tiny_plan_dict()
    data["train"]["precision"] = "fp32"
    fp32 = plan_from_dict(data)
    data["train"]["precision"] = "bf16"
    bf16 = plan_from_dict(data)
    out = tmp_path / "run"
    _interrupted_then_resumed(fp32, sample_dir, out, stop_after=5, resume_plan=bf16)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    used = [r["precision"] for r in lines if r["kind"] == "train"]
    assert used[0] == "fp32" and used[-1] == "bf16", used
    assert "bf16" in (out / "plan.toml").read_text(), "the run records the plan it went on with"
    report = (out / "report.md").read_text()
    assert "bf16" in report
    assert "CUDA graphs: train.cuda_graphs = 'auto': off, it needs a CUDA device, not cpu." in report


def test_refused_combinations_say_so_in_one_line(sample_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="cuda_graphs = true needs a CUDA device") as exc:
        StepOptions.for_run(TrainConfig(cuda_graphs=True), torch.device("cpu"))
    assert "\n" not in str(exc.value)
    # (a CUDA device object needs no GPU: the micro-batch check comes before any CUDA call)
    with pytest.raises(ConfigError, match="not with data.micro_batches = 2"):
        StepOptions.for_run(TrainConfig(cuda_graphs=True), torch.device("cuda"), micro_batches=2)
    with pytest.raises(ConfigError, match="not with torchrun"):
        StepOptions.for_run(TrainConfig(cuda_graphs=True), torch.device("cuda"), distributed=True)
    with pytest.raises(ConfigError, match="not 'for_loop'"):  # for-loop Adadelta reads its rate on the host
        StepOptions.for_run(TrainConfig(cuda_graphs=True, optimizer_impl="for_loop"), torch.device("cuda"))
    data = tiny_plan_dict()
    data["train"]["optimizer_impl"] = "fused"
    with pytest.raises(ConfigError, match=r"phase '1-1' stage 'adadelta'.*no fused adadelta"):
        plan_from_dict(data, "plan.toml")
    data["train"]["optimizer_impl"] = "fastest"
    with pytest.raises(ConfigError, match=r"train.optimizer_impl = 'fastest' is not one of"):
        plan_from_dict(data, "plan.toml")
    code = train_cli.main(
        [
            "--config",
            "demo",
            "--data",
            str(sample_dir),
            "--out",
            str(tmp_path / "r"),
            "--device",
            "cpu",
            "--cuda-graphs",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and "cuda_graphs = true needs a CUDA device" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists(), "refused before the run directory is made"


def test_cuda_graphs_auto_is_on_where_a_step_qualifies_and_says_why_elsewhere(monkeypatch):
    """The auto rule, each refusal reason, and true/false unchanged (a CUDA device object needs
    no GPU: nothing here calls CUDA; native bf16 is stubbed)."""
    import mcan_deploy.train.step as step

    monkeypatch.setattr(step, "native_bf16", lambda device: (True, "stub"))
    cuda = torch.device("cuda")

    def graphs(device, micro_batches=1, distributed=False, **train):
        opts, _ = StepOptions.for_run(TrainConfig(**train), device, micro_batches, distributed)
        return opts.cuda_graphs, opts.graphs_why

    assert TrainConfig().cuda_graphs == "auto", "the default"
    on, why = graphs(cuda)
    assert on and why.startswith("train.cuda_graphs = 'auto': on")
    for args, kw, reason in [
        ((torch.device("cpu"),), {}, "needs a CUDA device, not cpu"),
        ((cuda, 2), {}, "not with data.micro_batches = 2"),
        ((cuda, 1, True), {}, "not with torchrun (DistributedDataParallel)"),
        ((cuda,), {"optimizer_impl": "for_loop"}, "reads its learning rate on the device"),
    ]:
        on, why = graphs(*args, **kw)
        assert not on and why.startswith("train.cuda_graphs = 'auto': off, it ") and reason in why, why
        with pytest.raises(ConfigError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            graphs(*args, cuda_graphs=True, **kw)  # true still refuses what auto turns off
        assert graphs(*args, cuda_graphs=False, **kw) == (False, "train.cuda_graphs = false")
    assert graphs(cuda, cuda_graphs=True) == (True, "train.cuda_graphs = true")
    assert graphs(cuda, cuda_graphs=False) == (False, "train.cuda_graphs = false")
    with pytest.raises(ConfigError, match="train.cuda_graphs = 'yes' is not one of"):
        TrainConfig(cuda_graphs="yes")  # type: ignore[arg-type]


def test_auto_precision_follows_the_hardware(monkeypatch):
    from mcan_deploy.train import step as step_mod

    monkeypatch.setattr(step_mod, "native_bf16", lambda device: (True, "CPU flags amx_bf16"))
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16", "train.precision = 'auto': CPU flags amx_bf16")
    monkeypatch.setattr(step_mod, "native_bf16", lambda device: (False, "no avx512_bf16 or amx_bf16 CPU flag"))
    assert resolve_precision("auto", torch.device("cpu"))[0] == "fp32"
    assert resolve_precision("bf16", torch.device("cpu"))[0] == "bf16", "asked for: kept, with a warning"


def test_validation_batches_crops_of_one_size_within_the_pixel_budget():
    imgs = [
        torch.zeros(3, 4, 4),
        torch.zeros(3, 4, 4),
        torch.zeros(3, 2, 8),
        torch.zeros(3, 4, 4),
        torch.zeros(3, 8, 8),
    ]
    assert _batches(imgs, 32) == [[0, 1], [3], [2], [4]]  # 16 px each: two a batch; 64 px: alone
    assert _batches(imgs, 1) == [[0], [1], [3], [2], [4]]


def test_batched_validation_in_bf16_scores_like_float32(sample_dir, tmp_path):
    """The periodic validations run batched in the training precision; the phase-end score (the
    saved float32 model's) in float32, equal to a per-image float32 evaluation."""
    from mcan_deploy.checkpoint import load_model
    from mcan_deploy.data import load_images
    from mcan_deploy.metrics import psnr

    data = tiny_plan_dict()
    data["train"].update(precision="bf16", val_every=2)
    data["data"]["val_max_size"] = 64
    out = tmp_path / "run"
    train(plan_from_dict(data), sample_dir, out, device="cpu", progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in lines if r["kind"] == "val"]
    final = [r for r in lines if r["kind"] == "phase"][-1]
    assert vals and all(r["val_seconds"] > 0 for r in [*vals, final])
    model = load_model(out / "model.safetensors")
    pairs = load_images(sample_dir / "test", max_size=64, progress=False)
    with torch.no_grad():
        want = sum(psnr(model(x[None]).clamp(0, 1), y[None]) for x, y in zip(pairs.inputs, pairs.targets)) / len(pairs)
    assert final["psnr"] == pytest.approx(want, abs=1e-4)
    assert "of the wall time" in (out / "report.md").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (run on a GPU machine)")
def test_cuda_graph_steps_equal_uncaptured_steps_over_100_steps():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    block = build_model(ModelConfig(n_blocks=1, n_resblocks=2, n_feats=16)).blocks[0].to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    batches = [(torch.rand(4, 3, 24, 24, device=dev, generator=g), torch.rand(4, 3, 24, 24, device=dev, generator=g))
               for _ in range(100)]  # fmt: skip
    results = []
    for optimizer in ("adam", "adadelta"):  # the learning rate steps down halfway: outside the graph
        stage = StageConfig(name="s", optimizer=optimizer, iters=[50, 50], lr=[1e-3, 1e-4])
        for graphs in (False, True):
            m = copy.deepcopy(block)
            opts = StepOptions(cuda_graphs=graphs, optimizer_impl="auto", device_type="cuda")
            opt = make_optimizer(m.parameters(), stage, "auto", graphs)
            step = TrainStep(lambda x, m=m: m(x, clamp=True), opt, F.l1_loss, opts)
            losses = []
            for i, (x, y) in enumerate(batches):
                set_lr(opt, stage.lr_at(i))
                losses.append(float(step(x, y)))
            results.append((losses, _flat(m)))
    for (l0, w0), (l1, w1) in (results[:2], results[2:]):
        assert max(abs(a - b) for a, b in zip(l0, l1)) < 1e-5
        torch.testing.assert_close(w1, w0, atol=1e-5, rtol=1e-4)
