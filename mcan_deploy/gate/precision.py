"""``--precision auto`` on a CPU: the fastest precision that keeps the gain, and why.

bf16 is only worth it where the CPU computes it in hardware (AMX or AVX-512 BF16): elsewhere it
is emulated and slower than float32. int8 pays only where it is faster than both on this CPU (on
an AMX CPU bf16 beat it: 4.9 s against 6.3 s on the paper-size N), and only when it passes the
gate. float32 is the fallback that needs no gate.
"""

from __future__ import annotations

from dataclasses import dataclass

from .verdict import Verdict

BF16_BAR = 0.97  # bf16 keeps at least this share of the gain at the gate's lower bound


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision to run and one line saying why (what was ruled out, and the times)."""

    precision: str
    why: str


def choose_cpu_precision(
    bf16_native: tuple[bool, str],
    seconds: dict[str, float],
    verdicts: dict[str, Verdict],
) -> PrecisionChoice:
    """The fastest of the precisions allowed: fp32 always; bf16 where ``bf16_native`` says the
    CPU has it and its verdict passes (judged at ``BF16_BAR``); int8 where its verdict passes.
    ``seconds`` holds each measured precision's time for the same image on this CPU."""
    if "fp32" not in seconds:
        raise ValueError("choose_cpu_precision: float32's time is the baseline and must be measured")
    allowed = {"fp32": seconds["fp32"]}
    notes = []
    native, how = bf16_native
    for p in ("bf16", "int8"):
        if p == "bf16" and not native:
            notes.append(f"bf16 not native here ({how})")
        elif p not in verdicts or p not in seconds:
            notes.append(f"{p} not measured")
        elif not verdicts[p].passed:
            notes.append(f"{p} fails the gate ({verdicts[p].describe()})")
        else:
            allowed[p] = seconds[p]
    best = min(allowed, key=lambda p: allowed[p])
    times = ", ".join(f"{p} {t:.3g} s" for p, t in sorted(seconds.items(), key=lambda kv: kv[1]))
    others = [p for p in allowed if p != best]
    why = f"{best}: the fastest that keeps the gain ({times})"
    if others:
        why += f"; also allowed: {', '.join(others)}"
    if notes:
        why += "; " + "; ".join(notes)
    return PrecisionChoice(best, why)
