"""The gym's outputs: ``results.json``, ``results.md`` and PNG plots in the output folder.

Public API:
    write_report(out_dir, result) -> list[Path]   -- result: the dict built by ``gym.cli.run``.
    markdown(result) -> str
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["write_report", "markdown"]


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _curve_tables(learn: list[dict]) -> list[str]:
    """Per evaluation step: pass@1 (mean over seeds and 95% t-interval) and mean response length."""
    steps = learn[0]["curve_steps"]
    if any(row["curve_steps"] != steps for row in learn):  # methods run with different budgets
        return []
    head = "| method | " + " | ".join(f"step {s}" for s in steps) + " |"
    rule = "|---|" + "---|" * len(steps)
    lines = ["", "### Held-out pass@1 per evaluation step (mean over seeds, 95% t-interval)", "", head, rule]
    for row in learn:
        cells = [
            f"{_fmt(m)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]" if row["seeds"] > 1 else _fmt(m)
            for m, lo, hi in zip(row["curve_mean"], row["curve_ci_low"], row["curve_ci_high"], strict=True)
        ]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    if all("curve_length_mean" in row for row in learn):
        lines += [
            "",
            "### Mean response length per evaluation step (tokens, held-out samples at T=1; correct ones in"
            " parentheses; last column greedy at the end)",
            "",
            head[:-1] + "| greedy |",
            rule + "---|",
        ]
        for row in learn:
            cells = [
                f"{_fmt(a, 1)} ({_fmt(c, 1)})"
                for a, c in zip(row["curve_length_mean"], row["curve_length_correct_mean"], strict=True)
            ]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {_fmt(row['final_greedy_length'], 1)} |")
    return lines


def markdown(result: dict) -> str:
    """Both tables and the run's settings as markdown."""
    ws = result["warm_start"]
    how = "cached" if ws.get("cached") else f"trained in {ws['seconds']:.0f} s"
    lines = [
        "# verl-credit gym",
        "",
        f"Warm start: greedy pass rate {_fmt(ws['pass_rate'])} on {ws['eval_n']} held-out problems ({how}).",
        "",
        "## Credit precision (AUC of causal vs filler/side tokens, 95% bootstrap CI over groups)",
        "",
        "| signal | AUC | 95% CI | causal tokens | filler tokens | mixed groups |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["credit"]:
        lines.append(
            f"| {row['signal']} | {_fmt(row['auc'])} | [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] |"
            f" {row['causal_tokens']} | {row['filler_tokens']} | {row['mixed_groups']} |"
        )
    learn = result.get("learning")
    if learn:
        lines += [
            "",
            f"## Learning (held-out pass@1 at temperature 1; target = start + {result['target_gain']:.2f}"
            f" = {_fmt(result['target'])})",
            "",
            "| method | seeds | final acc | 95% CI (t, seeds) | final greedy acc | steps to target |"
            " seeds reaching | mean train reward | s / run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in learn:
            steps = "-" if row["steps_to_target"] is None else f"{row['steps_to_target']:.0f}"
            lines.append(
                f"| {row['method']} | {row['seeds']} | {_fmt(row['final_acc'])} |"
                f" [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] | {_fmt(row['final_greedy_acc'])} | {steps} |"
                f" {row['seeds_reaching_target']}/{row['seeds']} | {_fmt(row['reward_mean'])} |"
                f" {row['seconds_per_run']:.1f} |"
            )
        lines += _curve_tables(learn)
    lines += ["", f"Settings: `{json.dumps(result['settings'])}`", f"Total time: {result['seconds']:.0f} s", ""]
    return "\n".join(lines)


def write_report(out_dir, result: dict) -> list[Path]:
    """Write results.json, results.md, credit_auc.png and (with learning) learning_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md", out / "credit_auc.png"]
    paths[0].write_text(json.dumps(result, indent=2))
    paths[1].write_text(markdown(result))

    rows = result["credit"]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2))
    ys = list(range(len(rows)))[::-1]
    aucs = [r["auc"] for r in rows]
    err = [[r["auc"] - r["ci_low"] for r in rows], [r["ci_high"] - r["auc"] for r in rows]]
    ax.barh(ys, aucs, xerr=err, color="tab:blue", alpha=0.8)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_yticks(ys, [r["signal"] for r in rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUC causal vs filler tokens (0.5 = no separation)")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)

    if result.get("learning"):
        path = out / "learning_curves.png"
        fig, (ax, ax_len) = plt.subplots(1, 2, figsize=(12, 4.5))
        for row in result["learning"]:
            (line,) = ax.plot(row["curve_steps"], row["curve_mean"], marker="o", ms=3, label=row["method"])
            if row["seeds"] > 1:
                ax.fill_between(
                    row["curve_steps"], row["curve_ci_low"], row["curve_ci_high"], color=line.get_color(), alpha=0.12
                )
            if "curve_length_mean" in row:
                ax_len.plot(row["curve_steps"], row["curve_length_mean"], marker="o", ms=3, label=row["method"])
        ax.axhline(result["target"], color="k", lw=0.8, ls="--", label="target")
        ax.set_xlabel("RL step")
        ax.set_ylabel("held-out pass@1 (T=1), mean over seeds (95% t-interval)")
        ax.legend(fontsize=7)
        ax_len.set_xlabel("RL step")
        ax_len.set_ylabel("mean response length (tokens, held-out, T=1)")
        ax_len.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
