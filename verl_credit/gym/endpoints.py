"""The gym's endpoints: AUC and final pass@1 per run, paired differences to GRPO, credit efficiency,
the validity check of the ground-truth bounds, and evaluation noise against the seed spread.

Public API:
    run_auc(curve) -> float                       -- area under the held-out pass@1 curve / step span.
    t_interval(values) -> (mean, low, high)       -- 95% t-interval over seeds (NaN bounds for < 2).
    paired(runs, method, base, key) -> dict       -- per-seed differences method - base, mean, ci.
    efficiency(runs, method, n_boot, seed) -> dict  -- (method - grpo) / (oracle - grpo) on AUC.
    endpoints(runs, held_out, eval_samples) -> dict -- everything above for every method in ``runs``.
    eval_sd_auc(runs, method) -> float | None     -- the measured evaluation noise of an AUC (replicates).
    eval_sd_paired(runs, method, base) -> float | None  -- the same for a paired AUC difference.
    validity_line(validity) -> str                -- "validity check: PASSED/FAILED ...".
    SHUFFLE_CONTROL                               -- the label of the oracle's step-size control run.

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
        oracle_vs_shuffle (reported, not part of ``passed``): AUC(oracle) - AUC(SHUFFLE_CONTROL), the
        default oracle over its own weights permuted within each rollout (same update size, no labels),
        "passed" when low > 0: the oracle's headroom is credit, not step size. None unless a run is
        labelled exactly ``SHUFFLE_CONTROL`` (``oracle:<DEFAULT_VARIANT>:shuffle``).
    noise: the evaluation noise of a run's AUC against the seed spread. Measured: every grpo and oracle
        run is evaluated twice at every evaluated step, with two sampling seeds (``curve`` and
        ``curve_replicate``, same policy), so e_s = AUC_s - AUC'_s has variance 2 sigma_eval^2 and
        eval_sd_auc = sqrt(mean_s e_s^2 / 2) (mean 0 by construction, S degrees of freedom). Bound, for
        reference: eval_se = sqrt(p (1 - p) / (N k)), the binomial SE of one evaluation point (N held-out
        problems x k samples, p = grpo's mean AUC). seed_sd = SD over seeds of grpo's AUC (it contains the
        evaluation noise). level_ok when the measured eval_sd_auc < seed_sd / 4 (the issue's bar:
        evaluation noise below a quarter of the seed spread); without replicates (``eval_replicate`` off,
        runs from an older results.json) the bound stands in for it. ``paired``: the same for the paired
        difference d_s = AUC(oracle, s) - AUC(grpo, s), the quantity every endpoint is (eval_sd from
        e_s = d_s - d'_s, both methods evaluated with the same sampling seeds; seed_sd = SD over seeds of
        d_s); ok = level_ok and paired ok (when measured). samples_factor: the evaluation noise falls as
        1/sqrt(samples), and the training part of the seed spread is tau^2 = seed_sd^2 - eval_sd^2, so the
        bar (sigma < sqrt(tau^2 + sigma^2) / 4, i.e. sigma^2 < tau^2 / 15) needs about
        15 eval_sd^2 / tau^2 times the evaluation samples (below 1: fewer would do; NaN when
        tau^2 <= 0: the seed spread does not resolve any training spread).
"""

from __future__ import annotations

import math

import numpy as np

from verl_credit.gym.defaults import DEFAULT_VARIANT

__all__ = [
    "MIN_HEADROOM",
    "SHUFFLE_CONTROL",
    "run_auc",
    "t_interval",
    "paired",
    "efficiency",
    "eval_sd_auc",
    "eval_sd_paired",
    "endpoints",
    "validity_line",
]

MIN_HEADROOM = 0.03
BASE = "grpo"
ORACLE = "oracle"
SHUFFLE_CONTROL = f"{ORACLE}:{DEFAULT_VARIANT}:shuffle"  # the oracle's step-size control (gym.oracle)


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
    m, g, o = (_per_seed(runs, name, "auc") for name in (method, BASE, ORACLE))
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


def _replicated_aucs(runs: list[dict], method: str) -> dict[int, tuple[float, float]]:
    """{seed: (AUC, AUC')} of ``method``'s runs evaluated twice (``curve`` and ``curve_replicate``)."""
    return {
        r["seed"]: (run_auc(r["curve"]), run_auc(r["curve_replicate"]))
        for r in runs
        if r["method"] == method and r.get("curve_replicate")
    }


def eval_sd_auc(runs: list[dict], method: str = BASE) -> float | None:
    """sqrt(mean_s (AUC_s - AUC'_s)^2 / 2) over ``method``'s runs evaluated twice (``curve_replicate``):
    the measured SD of a run's AUC over evaluation sampling seeds; None when no run has a replicate."""
    pairs = _replicated_aucs(runs, method)
    if not pairs:
        return None
    return float(math.sqrt(np.mean([(a - b) ** 2 for a, b in pairs.values()]) / 2))


def eval_sd_paired(runs: list[dict], method: str = ORACLE, base: str = BASE) -> float | None:
    """sqrt(mean_s ((A_s - B_s) - (A'_s - B'_s))^2 / 2) over the seeds where both ``method`` (A) and
    ``base`` (B) were evaluated twice: the measured SD over evaluation seeds of a paired AUC difference
    (both methods evaluated with the same sampling seed, so that common noise cancels); None without."""
    a, b = _replicated_aucs(runs, method), _replicated_aucs(runs, base)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    e = [(a[s][0] - b[s][0]) - (a[s][1] - b[s][1]) for s in seeds]
    return float(math.sqrt(np.mean(np.square(e)) / 2))


def _noise_check(eval_sd: float, values: list[float]) -> dict:
    """eval_sd against the SD over seeds of ``values`` (which contains it): ratio, ok (< 1/4) and the
    factor on the evaluation samples that would meet the bar (see the module docstring)."""
    seed_sd = float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")
    ratio = eval_sd / seed_sd if seed_sd and not math.isnan(seed_sd) else float("nan")
    train_var = seed_sd**2 - eval_sd**2
    factor = 15 * eval_sd**2 / train_var if train_var > 0 else float("nan")
    return {
        "seed_sd": seed_sd,
        "ratio": ratio,
        "ok": bool(not math.isnan(seed_sd) and eval_sd < seed_sd / 4),
        "samples_factor": factor,
    }


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
        row["credit_efficiency"] = efficiency(runs, name) if {BASE, ORACLE} <= set(names) else None
        methods[name] = row
    oracle = _check(paired(runs, ORACLE, BASE, "auc"), MIN_HEADROOM) if {ORACLE, BASE} <= set(names) else None
    anti = None
    if {"anti_oracle", BASE} <= set(names):
        d = paired(runs, BASE, "anti_oracle", "auc")
        anti = _check(d, -math.inf)
    shuffle = None
    if {ORACLE, SHUFFLE_CONTROL} <= set(names):
        shuffle = _check(paired(runs, ORACLE, SHUFFLE_CONTROL, "auc"), -math.inf)
    validity = {
        "oracle_vs_grpo": oracle,
        "grpo_vs_anti_oracle": anti,
        "oracle_vs_shuffle": shuffle,
        "min_headroom": MIN_HEADROOM,
        "passed": bool(oracle and oracle["passed"] and anti and anti["passed"]),
    }
    noise = None
    if BASE in names:
        p = methods[BASE]["auc"]["mean"]
        eval_se = math.sqrt(max(p * (1 - p), 0.0) / max(held_out * eval_samples, 1))
        eval_sd = eval_sd_auc(runs)
        level = _noise_check(eval_se if eval_sd is None else eval_sd, list(_per_seed(runs, BASE, "auc").values()))
        d = paired(runs, ORACLE, BASE, "auc") if ORACLE in names else None
        eval_sd_d = eval_sd_paired(runs)
        pair = None
        if d is not None and eval_sd_d is not None:
            pair = {"method": ORACLE, "eval_sd": eval_sd_d}
            pair.update(_noise_check(eval_sd_d, list(d["per_seed"].values())))
            pair["replicates"] = len(set(_replicated_aucs(runs, ORACLE)) & set(_replicated_aucs(runs, BASE)))
        noise = {
            "eval_se": eval_se,
            "eval_sd_auc": eval_sd,
            "replicates": len(_replicated_aucs(runs, BASE)),
            "seed_sd_auc": level["seed_sd"],
            "ratio": level["ratio"],
            "samples_factor": level["samples_factor"],
            "level_ok": level["ok"],
            "paired": pair,
            "ok": bool(level["ok"] and (pair is None or pair["ok"])),
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
    line = f"validity check: {word}; {oracle}; {anti}"
    if validity.get("oracle_vs_shuffle") is not None:  # older results.json files have no such key
        line += "; " + _fmt_check("oracle - shuffle control", validity["oracle_vs_shuffle"], "credit: CI > 0")
    return line
