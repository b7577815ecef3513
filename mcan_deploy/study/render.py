"""Markdown tables of an experiment, rendered from its ``results.json`` dict alone."""

from __future__ import annotations

from typing import Any

_METRIC_NAMES = {
    "psnr": "PSNR RGB (dB)",
    "psnr_y": "PSNR Y (dB)",
    "ssim": "SSIM RGB",
    "ssim_y": "SSIM Y",
    "best_psnr": "best validation PSNR RGB (dB)",
}
METRICS = ("psnr", "psnr_y", "ssim", "ssim_y")


def _digits(metric: str) -> int:
    return 4 if metric.startswith("ssim") else 3


def pm(s: dict[str, Any], metric: str) -> str:
    """mean ± std of a summary."""
    d = _digits(metric)
    return f"{s['mean']:.{d}f} ± {s['std']:.{d}f}"


def _verdict(v: dict[str, Any], metric: str) -> str:
    d = _digits(metric)
    unit = " dB" if "psnr" in metric else ""
    return (
        f"{v['diff']:+.{d}f}{unit} | {v['se']:.{d}f} | {v['t']:+.2f} ({v['df']:.2f}) | {v['t_crit']:.2f} | "
        f"{'**yes**' if v['exceeds_spread'] else 'no'} | "
        + (f"{v['higher_in']} of {v['seeds']}" if "higher_in" in v else "-")
    )


def _diff_table(title: str, diffs: dict[str, dict[str, Any]], metrics: tuple[str, ...]) -> list[str]:
    lines = [
        f"| {title} | metric | difference | standard error | t (df) | 5% critical t | exceeds the spread? "
        "| higher in (seed by seed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, per in diffs.items():
        for m in metrics:
            if m in per:
                lines.append(f"| {name} | {_METRIC_NAMES[m]} | {_verdict(per[m], m)} |")
    return lines


def _identity_row(identity: dict[str, float], cols: int) -> str:
    return (
        "| identity (LR vs HR) | " + " | ".join(f"{identity[m]:.{_digits(m)}f}" for m in METRICS) + " |" + " - |" * cols
    )


def _budget_table(budgets: dict[str, dict[str, Any]], finals: dict[str, dict[str, Any]] | None) -> list[str]:
    lines = [
        "| plan | iterations | back-propagations per parameter | pixels per update | training TFLOPs | "
        "generation TFLOPs | total TFLOPs | training time (s) | generation time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    shared = False
    for label, b in budgets.items():
        per = sorted(set(b["backprops_per_block"]))
        bp = str(per[0]) if len(per) == 1 else f"{per[0]}-{per[-1]}"
        times = "- | -"
        if finals and label in finals:
            t, mark = finals[label]["train_seconds"], " †" if finals[label].get("packed", 1) > 1 else ""
            shared = shared or bool(mark)
            times = f"{t['mean']:.0f} ± {t['std']:.0f}{mark} | {finals[label]['generate_seconds']['mean']:.0f}"
        lines.append(
            f"| {label} | {b['iterations']} | {bp} | {b['pixels_per_update']} | {b['train_flops'] / 1e12:.2f} | "
            f"{b['generate_flops'] / 1e12:.2f} | {b['total_flops'] / 1e12:.2f} | {times} |"
        )
    if shared:
        lines += ["", "† trained together with other runs on one device (`--pack`): the time is shared, not its own."]
    return lines


def _header(r: dict[str, Any]) -> list[str]:
    e = r["experiment"]
    plans = ", ".join(f"{k} = `{v}`" for k, v in r["plans"].items())
    data = ", ".join(f"{k} = `{v}`" for k, v in r["data"].items()) if isinstance(r["data"], dict) else f"`{r['data']}`"
    return [
        f"### {e['title']} (report {e['report']})",
        "",
        f"Claim: {e['claim']}",
        "",
        f"Scale: **{r['scale']}**{' (smoke run: every span cut to ' + str(r['max_iters']) + ' iterations)' if r.get('max_iters') else ''}; "
        f"plans: {plans}; seeds {', '.join(map(str, r['seeds']))}; data {data}. "
        f"Made by `{r['command']}` at commit {r['commit']}.",
        "",
    ]


def _compare(r: dict[str, Any]) -> list[str]:
    e = r["experiment"]
    rv = e["report_values"]
    lines = [
        "| plan | "
        + " | ".join(_METRIC_NAMES[m] for m in METRICS)
        + " | best validation PSNR (dB) | the report (dB) |",
        "|---|---|---|---|---|---|---|",
        _identity_row(r["identity"], 2),
    ]
    for label, f in r["finals"].items():
        lines.append(
            f"| {label} | "
            + " | ".join(pm(f[m], m) for m in METRICS)
            + f" | {pm(f['best_psnr'], 'psnr')} | {rv.get(label, '-')} |"
        )
    lines += [
        "",
        *_diff_table(
            "difference", {f"{k} - {e['baseline']}": v for k, v in r["diffs"].items()}, (*METRICS, "best_psnr")
        ),
        "",
        "Budget:",
        "",
        *_budget_table(r["budgets"], r["finals"]),
    ]
    return lines


def _phases(r: dict[str, Any]) -> list[str]:
    rv = r["experiment"]["report_values"]
    lines = [
        "| after phase | output | "
        + " | ".join(_METRIC_NAMES[m] for m in METRICS)
        + " | gain over the previous row, PSNR RGB (paired over seeds) | exceeds the spread? | the report (dB) |",
        "|---|---|---|---|---|---|---|---|---|",
        "| - | LR (identity) | " + " | ".join(f"{r['identity'][m]:.{_digits(m)}f}" for m in METRICS) + " | - | - | - |",
    ]
    for name, p in r["phases"].items():
        g = p["gain"]["psnr"]
        lines.append(
            f"| {name} | {p['output']} | "
            + " | ".join(pm(p[m], m) for m in METRICS)
            + f" | {g['diff']:+.3f} dB (SE {g['se']:.3f}, t {g['t']:+.2f}, df {g['df']:.0f}) | "
            f"{'**yes**' if g['exceeds_spread'] else 'no'} | {rv.get(name, '-')} |"
        )
    return lines


def _patch(r: dict[str, Any]) -> list[str]:
    lines = [
        "| plan | " + " | ".join(_METRIC_NAMES[m] for m in METRICS) + " | best validation PSNR (dB) |",
        "|---|---|---|---|---|---|",
        _identity_row(r["identity"], 1),
    ]
    for label, f in r["finals"].items():
        lines.append(f"| {label} | " + " | ".join(pm(f[m], m) for m in METRICS) + f" | {pm(f['best_psnr'], 'psnr')} |")
    lines += [
        "",
        *_diff_table("difference", r["diffs"], METRICS),
        "",
        "Budget:",
        "",
        *_budget_table(r["budgets"], r["finals"]),
    ]
    return lines


def _inverse(r: dict[str, Any]) -> list[str]:
    lines = []
    for label, rows in r["prefixes"].items():
        lines += [
            f"Blocks of the final **{label}** N applied in turn:",
            "",
            "| output | "
            + " | ".join(_METRIC_NAMES[m] for m in METRICS)
            + " | gain over the previous row, PSNR RGB (paired) | exceeds the spread? |",
            "|---|---|---|---|---|---|---|",
            "| LR (identity) | " + " | ".join(f"{r['identity'][m]:.{_digits(m)}f}" for m in METRICS) + " | - | - |",
        ]
        for row in rows:
            g = row["gain"]["psnr"]
            lines.append(
                f"| {row['output']} | "
                + " | ".join(pm(row[m], m) for m in METRICS)
                + f" | {g['diff']:+.3f} dB (SE {g['se']:.3f}) | {'**yes**' if g['exceeds_spread'] else 'no'} |"
            )
        lines.append("")
    if r.get("phased_minus_single"):
        lines += _diff_table(
            "phased - single, PSNR RGB", {k: {"psnr": v} for k, v in r["phased_minus_single"].items()}, ("psnr",)
        )
    return lines


def _transfer(r: dict[str, Any]) -> list[str]:
    lines = ["| label | trains on | starts from |", "|---|---|---|"]
    for label, c in r["conditions"].items():
        lines.append(
            f"| {label} | {' + '.join(c['train_on'])} | "
            + (f"{c['start_from']}'s model of the same seed" if c["start_from"] else "scratch")
            + " |"
        )
    for name, finals in r["finals"].items():
        lines += [
            "",
            f"On the **{name}** test pairs (`{r['folders'][name]}`, centre crops of at most {r['eval_max_size']} px):",
            "",
            "| model | " + " | ".join(_METRIC_NAMES[m] for m in METRICS) + " | gain over the identity, PSNR RGB (dB) |",
            "|---|---|---|---|---|---|",
            "| identity (LR vs HR) | "
            + " | ".join(f"{r['identity'][name][m]:.{_digits(m)}f}" for m in METRICS)
            + " | - |",
        ]
        for label, f in finals.items():
            g = r["gains"][name][label]
            lines.append(
                f"| {label} | " + " | ".join(pm(f[m], m) for m in METRICS) + f" | {g['mean']:+.3f} ± {g['std']:.3f} |"
            )
        if r["diffs"][name]:  # results.json has SSIM too
            lines += ["", *_diff_table(f"difference on {name}", r["diffs"][name], ("psnr", "psnr_y"))]
    return [*lines, "", "Budget (on the folders each label trains on):", "", *_budget_table(r["budgets"], r["times"])]


def render(r: dict[str, Any]) -> str:
    """The experiment's section: header, tables and plot links."""
    kinds = {"compare": _compare, "phases": _phases, "patch": _patch, "inverse": _inverse, "transfer": _transfer}
    body = kinds[r["experiment"]["kind"]](r)
    plots = [f"![{p}]({p})" for p in r["plots"]]
    return "\n".join([*_header(r), *body, "", *plots, ""])
