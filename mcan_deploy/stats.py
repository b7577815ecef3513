"""Mean, spread and whether a difference exceeds it: the few statistics a seed study and the
reduced-precision gate need.

With three seeds a difference is only worth reporting against its uncertainty, so every
comparison carries the Welch t statistic (unpaired runs) or a paired t (phases of one run) and the
two-sided 5% critical value of Student's t for its degrees of freedom.
"""

from __future__ import annotations

import math
from typing import Any

# two-sided 5% critical values of Student's t, df = 1..30 (beyond: the normal 1.96)
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t_critical(df: float) -> float:
    """Two-sided 5% critical t for ``df`` degrees of freedom, rounded down (conservative)."""
    d = math.floor(df)
    if d < 1:
        return math.inf
    return _T975[d - 1] if d <= len(_T975) else 1.96


def summary(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one value) with the values themselves."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def _verdict(diff: float, se: float, df: float) -> dict[str, Any]:
    t = diff / se if se > 0 else (math.inf if diff else 0.0)
    crit = t_critical(df)
    return {"diff": diff, "se": se, "t": t, "df": df, "t_crit": crit, "exceeds_spread": abs(t) > crit}


def welch(a: list[float], b: list[float]) -> dict[str, Any]:
    """mean(a) - mean(b) with Welch's standard error and degrees of freedom; ``exceeds_spread``
    when |t| is above the 5% critical value (runs of different plans are not paired)."""
    sa, sb = summary(a), summary(b)
    va, vb = sa["std"] ** 2 / sa["n"], sb["std"] ** 2 / sb["n"]
    se = math.sqrt(va + vb)
    den = (va**2 / (sa["n"] - 1) if sa["n"] > 1 else 0.0) + (vb**2 / (sb["n"] - 1) if sb["n"] > 1 else 0.0)
    df = (va + vb) ** 2 / den if den > 0 else float(sa["n"] + sb["n"] - 2)
    return _verdict(sa["mean"] - sb["mean"], se, df)


def paired(after: list[float], before: list[float]) -> dict[str, Any]:
    """Mean of the per-seed differences after - before, with the paired t test (the same run
    measured twice, e.g. after phase 1 and after phase 2)."""
    d = summary([x - y for x, y in zip(after, before, strict=True)])
    return _verdict(d["mean"], d["std"] / math.sqrt(d["n"]), d["n"] - 1)
