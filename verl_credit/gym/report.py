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


def _ci(d: dict | None, sign: bool = True) -> str:
    """``+0.012 [-0.003, +0.027]`` of {"mean", "ci"}; "-" for None; no brackets without an interval."""
    if d is None:
        return "-"
    f = "+.3f" if sign else ".3f"
    mean, (low, high) = d["mean"] if "mean" in d else d["value"], d["ci"]
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if low is None or math.isnan(low):
        return f"{mean:{f}}"
    return f"{mean:{f}} [{low:{f}}, {high:{f}}]"


def _endpoint_table(result: dict) -> list[str]:
    """method | seeds | final pass@1 | AUC | paired final diff vs grpo | AUC diff | credit efficiency | s/run."""
    learn = result["learning"]
    if "auc" not in learn[0]:
        return []
    lines = [
        "",
        "### Endpoints (paired by seed; 95% t-interval over seeds; credit efficiency = (method - grpo) / "
        "(oracle - grpo) on AUC, paired bootstrap over seeds)",
        "",
        "| method | seeds | final pass@1 | AUC | final diff vs grpo [CI] | AUC diff vs grpo [CI] |"
        " credit efficiency [CI] | s / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in learn:
        vs = row.get("vs_grpo") or {}
        lines.append(
            f"| {row['method']} | {row['seeds']} | {_ci(row['final'], False)} | {_ci(row['auc'], False)} |"
            f" {_ci(vs.get('final'))} | {_ci(vs.get('auc'))} | {_ci(row.get('credit_efficiency'))} |"
            f" {row['seconds_per_run']:.1f} |"
        )
    if not any(row["method"] == "grpo" for row in learn):
        lines += ["", "No `grpo` in the run: no paired differences (add grpo to --estimators)."]
    from verl_credit.gym.endpoints import validity_line

    validity = result.get("validity")
    if validity:
        lines += ["", validity_line(validity)]
    noise = result.get("noise")
    if noise:
        lines += ["", *noise_lines(noise)]
    return lines


def _verdict(ok: bool, seed_sd: float) -> str:
    if math.isnan(seed_sd):
        return "no seed spread with one seed: cannot compare with"
    return "below" if ok else "NOT below"


def _factor(f) -> str:
    if f is None or math.isnan(f):
        return ""
    return f"; the bar needs about {f:.1f}x the evaluation samples" if f > 1 else ""


def noise_lines(noise: dict) -> list[str]:
    """The evaluation-noise verdicts: grpo's AUC, and the oracle - grpo difference when measured."""
    size = f"{noise['held_out']} problems x {noise['eval_samples']} samples"
    if noise.get("eval_sd_auc") is not None:
        what = (
            f"SD of grpo's AUC over two evaluation seeds {_fmt(noise['eval_sd_auc'], 4)} (measured,"
            f" {noise['replicates']} runs; {size}; binomial SE of one point {_fmt(noise['eval_se'], 4)})"
        )
    else:
        what = f"binomial SE of one evaluation point {_fmt(noise['eval_se'], 4)} ({size}; no replicates)"
    level_ok = noise.get("level_ok", noise["ok"])
    out = [
        f"Evaluation noise: {what} vs SD over seeds of grpo's AUC {_fmt(noise['seed_sd_auc'], 4)}:"
        f" {_verdict(level_ok, noise['seed_sd_auc'])} a quarter of the seed spread"
        f"{_factor(noise.get('samples_factor'))}."
    ]
    pair = noise.get("paired")
    if pair:
        out.append(
            f"Evaluation noise of the paired difference oracle - grpo: {_fmt(pair['eval_sd'], 4)} (measured,"
            f" {pair['replicates']} seeds) vs its SD over seeds {_fmt(pair['seed_sd'], 4)}:"
            f" {_verdict(pair['ok'], pair['seed_sd'])} a quarter of the seed spread{_factor(pair['samples_factor'])}."
        )
    return out


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
        lines += _endpoint_table(result)
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
        bounds = {row["method"]: row for row in result["learning"] if row["method"] in ("oracle", "anti_oracle")}
        if len(bounds) == 2 and bounds["oracle"]["curve_steps"] == bounds["anti_oracle"]["curve_steps"]:
            ax.fill_between(
                bounds["oracle"]["curve_steps"],
                bounds["anti_oracle"]["curve_mean"],
                bounds["oracle"]["curve_mean"],
                color="0.85",
                alpha=0.5,
                label="ground-truth band",
            )
        for row in result["learning"]:
            if row["method"] in bounds:  # the bounds: black dashed (oracle) and grey dotted (anti_oracle)
                style = {"color": "k", "ls": "--"} if row["method"] == "oracle" else {"color": "0.4", "ls": ":"}
                ax.plot(row["curve_steps"], row["curve_mean"], lw=2, label=row["method"], **style)
                if "curve_length_mean" in row:
                    ax_len.plot(row["curve_steps"], row["curve_length_mean"], lw=2, label=row["method"], **style)
                continue
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
