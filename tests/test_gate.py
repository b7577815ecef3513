"""The reduced-precision gate without OpenVINO: disjoint roles of the pairs, the verdict's bound
and worst image against hand-computed values, and the CPU's auto precision rule."""

from __future__ import annotations

import math

import pytest

from mcan_deploy.errors import MCANError
from mcan_deploy.gate.precision import BF16_BAR, choose_cpu_precision
from mcan_deploy.gate.verdict import MAX_CALIBRATION, MAX_SELECTION, ImageScore, gate_splits, judge


@pytest.mark.parametrize("n_train,n_test", [(2, 2), (3, 1), (12, 3), (40, 5), (100, 7)])
def test_each_pair_has_exactly_one_role_and_the_verdict_has_the_most(n_train, n_test):
    train = [f"{i:03d}.png" for i in range(n_train)][::-1]  # any order in: sorted inside
    test = [f"{i:03d}.png" for i in range(n_test)]  # the same names as training pairs: kept apart
    s = gate_splits(train, test)
    roles = [s.calibration, s.selection, s.verdict]
    everything = [n for r in roles for n in r]
    assert len(everything) == len(set(everything)) == n_train + n_test, "one role per pair"
    assert set(everything) == {f"train/{n}" for n in train} | {f"test/{n}" for n in test}
    assert {f"test/{n}" for n in test} <= set(s.verdict), "every test pair judges"
    assert 1 <= len(s.calibration) <= MAX_CALIBRATION and 1 <= len(s.selection) <= MAX_SELECTION
    if n_train + n_test >= 12:
        assert len(s.verdict) > max(len(s.calibration), len(s.selection))
    # spread over the scenes: the first and second of every four sorted names
    names = sorted(train)
    assert s.calibration[0] == f"train/{names[0]}" and s.selection[0] == f"train/{names[1]}"


def test_too_few_pairs_are_refused_in_one_line():
    with pytest.raises(MCANError, match="at least 2 training pairs .* found 1"):
        gate_splits(["a.png"], ["b.png", "c.png"])
    with pytest.raises(MCANError, match="at least 2 pairs to judge on besides the 2 .* found 1"):
        gate_splits(["a.png", "b.png"], ["c.png"])


def _scores(kept: list[float], ref_gain: float = 1.0) -> list[ImageScore]:
    """Images with float32 ``ref_gain`` dB over an identity of 30 dB, the candidate keeping
    ``kept[i]`` of it."""
    return [ImageScore(f"{i}.png", 30.0, 30.0 + ref_gain, 30.0 + k * ref_gain) for i, k in enumerate(kept)]


def test_bound_and_worst_image_against_a_hand_count():
    # nine images keep everything, one keeps 10%: the mean keeps 91%
    v = judge(_scores([1.0] * 9 + [0.1]), 0.9)
    losses = [0.0] * 9 + [0.9]
    mean = sum(losses) / 10
    sd = math.sqrt(sum((d - mean) ** 2 for d in losses) / 9)
    assert v.retention == pytest.approx(0.91)
    assert v.bound == pytest.approx(1 - (mean + 2.262 * sd / math.sqrt(10)))  # t(9) at 97.5%
    assert v.bound == pytest.approx(0.7064, abs=1e-4)
    assert (v.worst_image, v.worst_retention) == ("9.png", pytest.approx(0.1))
    assert not v.passed, "the mean passes, the bound does not"
    assert judge(_scores([0.95, 0.96, 0.97, 0.98, 0.99]), 0.9).passed


def test_an_image_below_its_identity_is_refused_even_when_the_bound_passes():
    kept = [1.0] * 39 + [-0.05]
    v = judge(_scores(kept), 0.9)
    assert v.retention > 0.97 and v.bound > 0.9, "mean and bound pass"
    assert v.below_identity == ("39.png",) and not v.passed
    assert "below the identity on 39.png" in v.describe()
    # where float32 itself is below the identity, the candidate may be too
    scores = [*_scores([1.0] * 9), ImageScore("flat.png", 30.0, 29.9, 29.8)]
    assert judge(scores, 0.9).passed


def test_one_image_bounds_nothing_and_no_gain_cannot_be_judged():
    assert not judge(_scores([1.0]), 0.5).passed
    with pytest.raises(MCANError, match="does not improve on the identity"):
        judge(_scores([1.0, 1.0], ref_gain=-0.5), 0.9)


def _passing(p: str):
    return judge(_scores([1.0, 0.99, 0.995]), BF16_BAR if p == "bf16" else 0.9)


def _failing(p: str):
    return judge(_scores([1.0, 0.5, 0.7]), BF16_BAR if p == "bf16" else 0.9)


AMX = (True, "CPU flags amx_bf16")
AVX2 = (False, "no avx512_bf16 or amx_bf16 CPU flag")


def test_auto_precision_on_a_cpu_with_bf16_units():
    ok = {"bf16": _passing("bf16"), "int8": _passing("int8")}
    # AMX: bf16 faster than int8 (as measured on Sapphire Rapids)
    c = choose_cpu_precision(AMX, {"fp32": 10.0, "bf16": 4.9, "int8": 6.3}, ok)
    assert c.precision == "bf16" and "also allowed: fp32, int8" in c.why
    # int8 faster still: it wins only because it passes too
    assert choose_cpu_precision(AMX, {"fp32": 10.0, "bf16": 4.9, "int8": 3.0}, ok).precision == "int8"
    bad_int8 = {"bf16": _passing("bf16"), "int8": _failing("int8")}
    c = choose_cpu_precision(AMX, {"fp32": 10.0, "bf16": 4.9, "int8": 3.0}, bad_int8)
    assert c.precision == "bf16" and "int8 fails the gate" in c.why
    bad_bf16 = {"bf16": _failing("bf16"), "int8": _failing("int8")}
    assert choose_cpu_precision(AMX, {"fp32": 10.0, "bf16": 4.9, "int8": 3.0}, bad_bf16).precision == "fp32"


def test_auto_precision_on_a_cpu_without_bf16_units():
    ok = {"bf16": _passing("bf16"), "int8": _passing("int8")}
    c = choose_cpu_precision(AVX2, {"fp32": 10.0, "bf16": 2.0, "int8": 6.0}, ok)
    assert c.precision == "int8", "emulated bf16 is never chosen, even if a timing says it is fast"
    assert "bf16 not native here (no avx512_bf16 or amx_bf16 CPU flag)" in c.why
    c = choose_cpu_precision(AVX2, {"fp32": 10.0, "int8": 11.0}, {"int8": _passing("int8")})
    assert c.precision == "fp32" and c.why.startswith("fp32: the fastest")
    c = choose_cpu_precision(AVX2, {"fp32": 10.0, "int8": 6.0}, {"int8": _failing("int8")})
    assert c.precision == "fp32" and "int8 fails the gate (keeps" in c.why
    with pytest.raises(ValueError, match="float32's time"):
        choose_cpu_precision(AVX2, {"int8": 6.0}, {})
