"""The gym's endpoints: AUC and final pass@1 per run, paired differences to GRPO, credit efficiency,
the validity check of the ground-truth bounds, and evaluation noise against the seed spread.

Public API:
    run_auc(curve) -> float                       -- area under the held-out pass@1 curve / step span.
    t_interval(values) -> (mean, low, high)       -- 95% t-interval over seeds (NaN bounds for < 2).
    paired(runs, method, base, key) -> dict       -- per-seed differences method - base, mean, ci.
    efficiency(runs, method, n_boot, seed) -> dict  -- (method - grpo) / (oracle - grpo) on AUC.
    endpoints(runs, held_out, eval_samples) -> dict -- everything above for every method in ``runs``.
    eval_sd_auc(runs) -> float | None             -- the measured evaluation noise of an AUC (grpo replicates).
    validity_line(validity) -> str                -- "validity check: PASSED/FAILED ...".

Definitions (S seeds; methods are paired by seed: same training prompts, warm start, sampling seeds):
    AUC_run = sum_k (s_{k+1} - s_k) (a_k + a_{k+1}) / 2 / (s_last - s_first)   (trapezoid over the
        evaluated steps s_k with pass@1 a_k, divided by the span: a mean accuracy; one point: a_0).
    d_s = value(method, s) - value(grpo, s); mean and 95% t-interval of d over seeds (t_{S-1}).
    credit efficiency = mean_s d_s(method) / mean_s d_s(oracle) on AUC; interval: 95% percentile of a
        paired bootstrap over seeds (resample seeds with replacement, the same draw for the method
        and the oracle; resamples whose oracle gain is 0 are dropped). Only with >= 2 seeds.
    validity: oracle_vs_grpo = AUC(oracle) - AUC(grpo), passed when the 95% CI excludes 0 (low > 0)
        and the mean >= ``MIN_HEADROOM`` (0.03); grpo_vs_anti_oracle = AUC(grpo) - AUC(anti_oracle),
        passed when low > 0. ``passed`` overall = both. Missing methods: None entries, passed False.
    noise: the evaluation noise of a run's AUC against the seed spread. Measured: every grpo run is
        evaluated twice at every evaluated step, with two sampling seeds (``curve`` and ``curve_replicate``,
        same policy), so e_s = AUC_s - AUC'_s has variance 2 sigma_eval^2 and
        eval_sd_auc = sqrt(mean_s e_s^2 / 2) (mean 0 by construction, S degrees of freedom). Bound, for
        reference: eval_se = sqrt(p (1 - p) / (N k)), the binomial SE of one evaluation point (N held-out
        problems x k samples, p = grpo's mean AUC). seed_sd = SD over seeds of grpo's AUC (it contains the
        evaluation noise). ok when the measured eval_sd_auc < seed_sd / 4 (the issue's bar: evaluation
        noise below a quarter of the seed spread); without replicates (``eval_replicate`` off, runs from
        an older results.json) the bound stands in for it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "MIN_HEADROOM",
    "run_auc",
    "t_interval",
    "paired",
    "efficiency",
    "eval_sd_auc",
    "endpoints",
    "validity_line",
]

MIN_HEADROOM = 0.03
BASE = "grpo"


def run_auc(curve) -> float:
    """curve: [(step, acc), ...] in step order -> the trapezoid area / step span (a mean accuracy)."""
    steps = np.array([s for s, _ in curve], dtype=np.float64)
    acc = np.array([a for _, a in curve], dtype=np.float64)
    if len(steps) == 1:
        return float(acc[0])
    span = steps[-1] - steps[0]
    return float(np.sum(np.diff(steps) * (acc[1:] + acc[:-1]) / 2) / span)


def t_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): 95% t-interval of the mean over the values (NaN bounds with fewer than 2)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean()) if v.size else float("nan")
    if v.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, mean - half, mean + half


def _per_seed(runs: list[dict], method: str, key: str) -> dict[int, float]:
    out = {}
    for r in runs:
        if r["method"] == method:
            out[r["seed"]] = run_auc(r["curve"]) if key == "auc" else float(r["final"])
    return out


def paired(runs: list[dict], method: str, base: str = BASE, key: str = "auc") -> dict | None:
    """{"mean", "ci": [low, high], "per_seed": {seed: d}} of d_s = key(method, s) - key(base, s) over the
    seeds both ran (key: "auc" or "final"); None when they share no seed."""
    a, b = _per_seed(runs, method, key), _per_seed(runs, base, key)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    mean, low, high = t_interval(d)
    return {"mean": mean, "ci": [low, high], "per_seed": {str(s): v for s, v in zip(seeds, d, strict=True)}}


def efficiency(runs: list[dict], method: str, n_boot: int = 2000, seed: int = 0) -> dict | None:
    """{"value", "ci": [low, high], "boot_used"}: (method - grpo) / (oracle - grpo) on AUC with a paired
    bootstrap over seeds; None without grpo and oracle."""
    m, g, o = (_per_seed(runs, name, "auc") for name in (method, BASE, "oracle"))
    seeds = sorted(set(m) & set(g) & set(o))
    if not seeds:
        return None
    dm = np.array([m[s] - g[s] for s in seeds])
    do = np.array([o[s] - g[s] for s in seeds])
    value = float(dm.mean() / do.mean()) if do.mean() != 0 else float("nan")
    low = high = float("nan")
    used = 0
    if len(seeds) >= 2:
        draws = np.random.default_rng(seed).integers(0, len(seeds), size=(n_boot, len(seeds)))
        num, den = dm[draws].mean(1), do[draws].mean(1)
        ok = den != 0
        used = int(ok.sum())
        if used:
            ratios = num[ok] / den[ok]
            low, high = float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))
    return {"value": value, "ci": [low, high], "boot_used": used}


def eval_sd_auc(runs: list[dict]) -> float | None:
    """sqrt(mean_s (AUC_s - AUC'_s)^2 / 2) over grpo's runs evaluated twice (``curve_replicate``): the
    measured SD of a run's AUC over evaluation sampling seeds; None when no run has a replicate."""
    e = [
        run_auc(r["curve"]) - run_auc(r["curve_replicate"])
        for r in runs
        if r["method"] == BASE and r.get("curve_replicate")
    ]
    if not e:
        return None
    return float(math.sqrt(np.mean(np.square(e)) / 2))


def _check(d: dict | None, min_mean: float) -> dict | None:
    if d is None:
        return None
    low = d["ci"][0]
    passed = bool(not math.isnan(low) and low > 0 and d["mean"] >= min_mean)
    return {"mean": d["mean"], "ci": d["ci"], "per_seed": d["per_seed"], "passed": passed}


def endpoints(runs: list[dict], held_out: int, eval_samples: int) -> dict:
    """{"methods": {name: {"auc": {...}, "final": {...}, "vs_grpo": {"final", "auc"} | None,
    "credit_efficiency": {...} | None}}, "validity": {...}, "noise": {...}}; see the module docstring."""
    names = list(dict.fromkeys(r["method"] for r in runs))
    methods = {}
    for name in names:
        row = {}
        for key in ("auc", "final"):
            values = _per_seed(runs, name, key)
            mean, low, high = t_interval(list(values.values()))
            row[key] = {"mean": mean, "ci": [low, high], "per_seed": {str(s): v for s, v in values.items()}}
        row["vs_grpo"] = {key: paired(runs, name, BASE, key) for key in ("final", "auc")} if BASE in names else None
        row["credit_efficiency"] = efficiency(runs, name) if {BASE, "oracle"} <= set(names) else None
        methods[name] = row
    oracle = _check(paired(runs, "oracle", BASE, "auc"), MIN_HEADROOM) if {"oracle", BASE} <= set(names) else None
    anti = None
    if {"anti_oracle", BASE} <= set(names):
        d = paired(runs, BASE, "anti_oracle", "auc")
        anti = _check(d, -math.inf)
    validity = {
        "oracle_vs_grpo": oracle,
        "grpo_vs_anti_oracle": anti,
        "min_headroom": MIN_HEADROOM,
        "passed": bool(oracle and oracle["passed"] and anti and anti["passed"]),
    }
    noise = None
    if BASE in names:
        p = methods[BASE]["auc"]["mean"]
        eval_se = math.sqrt(max(p * (1 - p), 0.0) / max(held_out * eval_samples, 1))
        aucs = list(_per_seed(runs, BASE, "auc").values())
        seed_sd = float(np.std(aucs, ddof=1)) if len(aucs) >= 2 else float("nan")
        eval_sd = eval_sd_auc(runs)
        noise_value = eval_se if eval_sd is None else eval_sd
        noise = {
            "eval_se": eval_se,
            "eval_sd_auc": eval_sd,
            "replicates": sum(1 for r in runs if r["method"] == BASE and r.get("curve_replicate")),
            "seed_sd_auc": seed_sd,
            "ratio": noise_value / seed_sd if seed_sd and not math.isnan(seed_sd) else float("nan"),
            "ok": bool(not math.isnan(seed_sd) and noise_value < seed_sd / 4),
            "held_out": held_out,
            "eval_samples": eval_samples,
        }
    return {"methods": methods, "validity": validity, "noise": noise}


def _fmt_check(name: str, c: dict | None, bar: str) -> str:
    if c is None:
        return f"{name}: not run"
    low, high = c["ci"]
    ci = "no CI (one seed)" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"
    return f"{name} AUC {c['mean']:+.3f} {ci} ({bar}: {'ok' if c['passed'] else 'no'})"


def validity_line(validity: dict) -> str:
    """One line: PASSED/FAILED and both checks with their means and intervals."""
    if validity["oracle_vs_grpo"] is None and validity["grpo_vs_anti_oracle"] is None:
        return "validity check: not run (needs grpo, oracle and anti_oracle in --estimators)"
    word = "PASSED" if validity["passed"] else "FAILED"
    oracle = _fmt_check(
        "oracle - grpo", validity["oracle_vs_grpo"], f"needs CI > 0 and mean >= +{validity['min_headroom']:.2f}"
    )
    anti = _fmt_check("grpo - anti_oracle", validity["grpo_vs_anti_oracle"], "needs CI > 0")
    return f"validity check: {word}; {oracle}; {anti}"
