"""The gym's endpoints on hand-made runs: AUC as a mean accuracy, paired differences with t-intervals,
credit efficiency with its bootstrap interval, the validity check and the noise comparison."""

import math

import numpy as np
import pytest
from scipy import stats

from verl_credit.gym.endpoints import SHUFFLE_CONTROL, endpoints, paired, run_auc, t_interval, validity_line


def _run(method, seed, accs, steps=(0, 10, 20)):
    return {"method": method, "seed": seed, "curve": list(zip(steps, accs, strict=True)), "final": accs[-1]}


def test_auc_is_the_trapezoid_mean_accuracy():
    assert run_auc([(0, 0.2), (10, 0.4), (20, 0.4)]) == pytest.approx((3.0 + 4.0) / 20)
    assert run_auc([(0, 0.3), (5, 0.3), (20, 0.3)]) == pytest.approx(0.3)  # uneven steps, flat curve
    assert run_auc([(0, 0.25)]) == 0.25


def test_paired_differences_and_t_interval():
    rng = np.random.default_rng(0)
    runs = []
    for s in range(5):
        base = rng.uniform(0.2, 0.4, 3)
        runs += [_run("grpo", s, base), _run("m", s, base + 0.02 + rng.normal(0, 0.01, 3))]
    d = paired(runs, "m", "grpo", "auc")
    per = [run_auc(r["curve"]) for r in runs if r["method"] == "m"]
    per_g = [run_auc(r["curve"]) for r in runs if r["method"] == "grpo"]
    diffs = np.subtract(per, per_g)
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    assert d["mean"] == pytest.approx(diffs.mean())
    assert d["ci"] == pytest.approx([diffs.mean() - half, diffs.mean() + half])
    assert list(d["per_seed"]) == ["0", "1", "2", "3", "4"]
    final = paired(runs, "m", "grpo", "final")
    assert final["mean"] == pytest.approx(
        np.mean([r["final"] for r in runs if r["method"] == "m"])
        - np.mean([r["final"] for r in runs if r["method"] == "grpo"])
    )
    mean, low, high = t_interval([0.1])
    assert mean == 0.1 and math.isnan(low) and math.isnan(high)


def test_only_shared_seeds_are_paired():
    runs = [_run("grpo", 0, [0.1, 0.2, 0.3]), _run("m", 1, [0.1, 0.2, 0.3])]
    assert paired(runs, "m") is None


def _bounds_runs(gap_oracle, gap_anti, seeds=4, noise=0.005):
    rng = np.random.default_rng(1)
    runs = []
    for s in range(seeds):
        base = rng.uniform(0.3, 0.4, 3)
        runs += [_run("grpo", s, base)]
        runs += [_run("oracle", s, base + gap_oracle + rng.normal(0, noise, 3))]
        runs += [_run("anti_oracle", s, base - gap_anti + rng.normal(0, noise, 3))]
        runs += [_run("half", s, base + gap_oracle / 2 + rng.normal(0, noise, 3))]
    return runs


def test_validity_passes_with_headroom_and_fails_without():
    ok = endpoints(_bounds_runs(0.05, 0.2), held_out=128, eval_samples=4)
    v = ok["validity"]
    assert v["passed"] and v["oracle_vs_grpo"]["passed"] and v["grpo_vs_anti_oracle"]["passed"]
    assert v["oracle_vs_grpo"]["mean"] == pytest.approx(0.05, abs=0.01)
    assert validity_line(v).startswith("validity check: PASSED; oracle - grpo AUC +0.05")
    small = endpoints(_bounds_runs(0.015, 0.2), held_out=128, eval_samples=4)["validity"]
    assert small["oracle_vs_grpo"]["ci"][0] > 0 and not small["oracle_vs_grpo"]["passed"]  # below +0.03
    assert not small["passed"] and "FAILED" in validity_line(small)
    one = endpoints(_bounds_runs(0.05, 0.2, seeds=1), held_out=128, eval_samples=4)["validity"]
    assert not one["passed"] and "no CI (one seed)" in validity_line(one)
    assert v["oracle_vs_shuffle"] is None and "shuffle" not in validity_line(v)


def test_the_shuffle_control_says_whether_the_headroom_is_credit():
    """With runs labelled SHUFFLE_CONTROL the validity reports oracle - control (CI > 0: credit) without
    changing ``passed``; a control as good as the oracle fails it."""
    assert SHUFFLE_CONTROL == "oracle:lines:mask:fmt0:shuffle"
    rng = np.random.default_rng(2)
    for control_gap, credit in ((0.0, True), (0.05, False)):
        runs = []
        for r in _bounds_runs(0.05, 0.2):
            runs.append(r)
            if r["method"] == "grpo":
                accs = [a for _, a in r["curve"]]
                runs.append(_run(SHUFFLE_CONTROL, r["seed"], np.array(accs) + control_gap + rng.normal(0, 0.005, 3)))
        v = endpoints(runs, held_out=128, eval_samples=4)["validity"]
        assert v["passed"]  # the check is unchanged
        assert v["oracle_vs_shuffle"]["passed"] is credit
        expected = 0.05 - control_gap
        assert v["oracle_vs_shuffle"]["mean"] == pytest.approx(expected, abs=0.01)
        line = validity_line(v)
        assert f"oracle - shuffle control AUC {v['oracle_vs_shuffle']['mean']:+.3f} [" in line
        assert line.endswith(f"(credit: CI > 0: {'ok' if credit else 'no'})")


def test_credit_efficiency_and_vs_grpo_rows():
    ends = endpoints(_bounds_runs(0.06, 0.2), held_out=128, eval_samples=4)
    half = ends["methods"]["half"]
    assert half["credit_efficiency"]["value"] == pytest.approx(0.5, abs=0.1)
    low, high = half["credit_efficiency"]["ci"]
    assert low < half["credit_efficiency"]["value"] < high
    assert ends["methods"]["oracle"]["credit_efficiency"]["value"] == pytest.approx(1.0)
    assert ends["methods"]["grpo"]["vs_grpo"]["auc"]["mean"] == 0.0
    assert set(half["vs_grpo"]) == {"final", "auc"} and set(half["auc"]) == {"mean", "ci", "per_seed"}


def test_missing_methods_are_said():
    runs = [r for r in _bounds_runs(0.05, 0.2) if r["method"] != "grpo"]
    ends = endpoints(runs, held_out=128, eval_samples=4)
    assert ends["methods"]["oracle"]["vs_grpo"] is None and ends["noise"] is None
    assert validity_line(ends["validity"]).startswith("validity check: not run")
    runs = [r for r in _bounds_runs(0.05, 0.2) if r["method"] in ("grpo", "half")]
    ends = endpoints(runs, held_out=128, eval_samples=4)
    assert ends["methods"]["half"]["credit_efficiency"] is None


def test_noise_compares_the_point_se_with_the_seed_spread():
    runs = _bounds_runs(0.05, 0.2)
    ends = endpoints(runs, held_out=128, eval_samples=4)
    p = ends["methods"]["grpo"]["auc"]["mean"]
    assert ends["noise"]["eval_se"] == pytest.approx(math.sqrt(p * (1 - p) / 512))
    aucs = [run_auc(r["curve"]) for r in runs if r["method"] == "grpo"]
    assert ends["noise"]["seed_sd_auc"] == pytest.approx(np.std(aucs, ddof=1))
    assert ends["noise"]["ok"] == (ends["noise"]["eval_se"] < ends["noise"]["seed_sd_auc"] / 4)
    big = endpoints(runs, held_out=100_000, eval_samples=64)["noise"]
    assert big["ok"]


def test_noise_is_measured_from_the_replicate_evaluations_when_present():
    """With replicates, eval_sd_auc = sqrt(mean e^2 / 2) over grpo's runs and decides `ok`; a replicate
    drawn with a known evaluation SD sigma (same policy, fresh noise) recovers sigma."""
    rng = np.random.default_rng(3)
    sigma, seeds = 0.004, 400
    runs = []
    for s in range(seeds):
        truth = 0.3 + rng.normal(0, 0.02) + np.array([0.0, 0.05, 0.08])  # the policy's pass@1 per step
        run = _run("grpo", s, list(truth + rng.normal(0, sigma, 3)))
        run["curve_replicate"] = list(zip((0, 10, 20), truth + rng.normal(0, sigma, 3), strict=True))
        runs.append(run)
    noise = endpoints(runs, held_out=128, eval_samples=4)["noise"]
    e = [run_auc(r["curve"]) - run_auc(r["curve_replicate"]) for r in runs]
    assert noise["eval_sd_auc"] == pytest.approx(math.sqrt(np.mean(np.square(e)) / 2))
    # AUC weights over steps (0, 10, 20): 1/4, 1/2, 1/4 -> SD sigma * sqrt(1/16 + 1/4 + 1/16)
    assert noise["eval_sd_auc"] == pytest.approx(sigma * math.sqrt(0.375), rel=0.1)
    assert noise["replicates"] == seeds
    assert noise["ok"] == (noise["eval_sd_auc"] < noise["seed_sd_auc"] / 4)
    assert noise["ok"]  # 0.0024 against a seed SD of about 0.02
    # the bound (binomial SE of a point, 0.02 here) would have failed the same runs
    assert noise["eval_se"] > noise["seed_sd_auc"] / 4
    without = endpoints([{k: v for k, v in r.items() if k != "curve_replicate"} for r in runs], 128, 4)["noise"]
    assert without["eval_sd_auc"] is None and without["replicates"] == 0
    assert without["ok"] == (without["eval_se"] < without["seed_sd_auc"] / 4)


def _replicated(method, seed, truth, sigma, rng, common=None):
    """A run of ``method`` whose policy has pass@1 ``truth`` per step, evaluated twice with eval noise
    ``sigma`` (``common``: the two evaluations' noise draws, shared with another method)."""
    e1, e2 = common if common is not None else (rng.normal(0, sigma, 3), rng.normal(0, sigma, 3))
    run = _run(method, seed, list(truth + e1))
    run["curve_replicate"] = list(zip((0, 10, 20), truth + e2, strict=True))
    return run


def test_paired_noise_is_measured_on_the_difference_and_common_noise_cancels():
    """eval_sd_paired = sqrt(mean ((d - d'))^2 / 2): independent evaluation noise sigma on both methods
    gives sqrt(2) sigma sqrt(0.375); noise shared by both (common random numbers) cancels to 0."""
    rng = np.random.default_rng(5)
    sigma, tau, seeds = 0.004, 0.01, 400
    indep, common = [], []
    for s in range(seeds):
        truth = 0.3 + rng.normal(0, 0.02) + np.array([0.0, 0.05, 0.08])
        gain = np.array([0.0, 1.0, 1.0]) * (0.03 + rng.normal(0, tau))  # the oracle's training spread
        indep += [_replicated("grpo", s, truth, sigma, rng), _replicated("oracle", s, truth + gain, sigma, rng)]
        shared = (rng.normal(0, sigma, 3), rng.normal(0, sigma, 3))
        common += [
            _replicated("grpo", s, truth, sigma, rng, shared),
            _replicated("oracle", s, truth + gain, sigma, rng, shared),
        ]
    noise = endpoints(indep, held_out=128, eval_samples=4)["noise"]
    pair = noise["paired"]
    e = []
    for s in range(seeds):
        g, o = indep[2 * s], indep[2 * s + 1]
        e.append(
            (run_auc(o["curve"]) - run_auc(g["curve"]))
            - (run_auc(o["curve_replicate"]) - run_auc(g["curve_replicate"]))
        )
    assert pair["eval_sd"] == pytest.approx(math.sqrt(np.mean(np.square(e)) / 2))
    assert pair["eval_sd"] == pytest.approx(math.sqrt(2 * 0.375) * sigma, rel=0.1)
    assert pair["method"] == "oracle" and pair["replicates"] == seeds
    # seed spread of d: training (tau on the last two points: AUC weight 3/4) and evaluation
    d = np.array(list(paired(indep, "oracle")["per_seed"].values()))
    assert pair["seed_sd"] == pytest.approx(d.std(ddof=1))
    assert pair["seed_sd"] == pytest.approx(math.sqrt((0.75 * tau) ** 2 + 0.75 * sigma**2), rel=0.1)
    assert pair["ok"] == (pair["eval_sd"] < pair["seed_sd"] / 4)
    assert noise["ok"] == (noise["level_ok"] and pair["ok"])
    assert endpoints(common, 128, 4)["noise"]["paired"]["eval_sd"] == pytest.approx(0.0, abs=1e-12)
    # without the oracle's replicates no paired noise is measured; the level check decides alone
    grpo_only = [r if r["method"] == "grpo" else {k: v for k, v in r.items() if k != "curve_replicate"} for r in indep]
    alone = endpoints(grpo_only, 128, 4)["noise"]
    assert alone["paired"] is None and alone["ok"] == alone["level_ok"]


@pytest.mark.parametrize(("sigma", "tau"), [(0.006, 0.004), (0.002, 0.02)])
def test_samples_factor_meets_the_bar_when_applied(sigma, tau):
    """samples_factor F = 15 eval_sd^2 / (seed_sd^2 - eval_sd^2): evaluating with F times the samples
    (noise sigma / sqrt(F)) puts the measured evaluation noise at a quarter of the seed spread."""
    rng = np.random.default_rng(7)
    seeds = 2000

    def runs_with(s_eval):
        out = []
        for s in range(seeds):
            truth = 0.3 + rng.normal(0, tau) + np.array([0.0, 0.0, 0.0])
            out.append(_replicated("grpo", s, truth, s_eval, rng))
        return out

    noise = endpoints(runs_with(sigma), 128, 4)["noise"]
    expected = 15 * noise["eval_sd_auc"] ** 2 / (noise["seed_sd_auc"] ** 2 - noise["eval_sd_auc"] ** 2)
    assert noise["samples_factor"] == pytest.approx(expected)
    # the model's own value: eval SD of an AUC over (0, 10, 20) = sigma sqrt(0.375)
    assert noise["samples_factor"] == pytest.approx(15 * 0.375 * sigma**2 / tau**2, rel=0.15)
    assert noise["level_ok"] == (noise["samples_factor"] < 1)
    after = endpoints(runs_with(sigma / math.sqrt(noise["samples_factor"])), 128, 4)["noise"]
    assert after["ratio"] == pytest.approx(0.25, rel=0.1)
