"""``verl-credit gym --quick`` end to end, a user estimator in the table, and the AUC maths."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

import verl_credit
from verl_credit.cli import main
from verl_credit.core.groups import group_outcome_advantage
from verl_credit.gym.credit import auc, bootstrap_auc


@verl_credit.register_estimator("gym_test_half_credit")
def gym_test_half_credit(batch, ctx):
    """GRPO advantage on the first half of each response, half of it on the rest."""
    z = group_outcome_advantage(batch.scores, batch.groups, ctx.norm_adv_by_std, ctx.config.epsilon)
    pos = torch.arange(batch.responses.shape[1]).float()
    half = batch.response_mask.sum(-1, keepdim=True) / 2
    scale = torch.where(pos < half, 1.0, 0.5)
    return verl_credit.CreditOutput(advantages=z[:, None] * scale * batch.response_mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_mannwhitneyu(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=200).astype(float)  # many ties
    positive = rng.random(200) < 0.4
    u = mannwhitneyu(scores[positive], scores[~positive], alternative="two-sided").statistic
    assert auc(scores, positive) == pytest.approx(u / (positive.sum() * (~positive).sum()), abs=1e-12)
    # integer weights are repetitions
    w = rng.integers(0, 3, size=200)
    rep_s, rep_p = np.repeat(scores, w), np.repeat(positive, w)
    u = mannwhitneyu(rep_s[rep_p], rep_s[~rep_p], alternative="two-sided").statistic
    assert auc(scores, positive, w) == pytest.approx(u / (rep_p.sum() * (~rep_p).sum()), abs=1e-12)
    assert auc(np.arange(10.0), np.arange(10) >= 5) == 1.0
    assert np.isnan(auc(np.arange(3.0), np.zeros(3, dtype=bool)))


def test_bootstrap_interval_brackets_the_point_and_is_seeded():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(30), 20)
    positive = rng.random(600) < 0.5
    scores = rng.normal(size=600) + positive * 0.5
    a = bootstrap_auc(scores, positive, clusters, n_boot=300, seed=1)
    assert a == bootstrap_auc(scores, positive, clusters, n_boot=300, seed=1)
    assert a[1] < a[0] < a[2] and 0.5 < a[0] < 1.0


def test_quick_gym_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "gym"
    argv = ["gym", "--quick", "--out", str(out), "--estimators", "grpo", "ktae", "counterfactual:inverted"]
    argv += ["variance_weighted", "gym_test_half_credit", "grpo+qp+rb", "grpo+lr", "oracle", "anti_oracle:mask"]
    argv += ["entropy80+m1", "optimal_token_baseline+clip_cov", "kl_cov"]  # kl_cov reports no pg_clipfrac
    argv += ["--import", "json", "--threads", "1", "--workers", "1"]  # the test estimator lives in this process
    argv += ["--train-prompts", "8"]  # quick: 2 steps x 8 prompts, every prompt seen in both steps
    assert main(argv) == 0
    for name in ("results.json", "results.md", "credit_auc.png", "learning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "results.json").read_text())
    signals = [r["signal"] for r in result["credit"]]
    assert {"grpo", "ktae", "ktae K", "counterfactual:inverted", "variance_weighted", "gym_test_half_credit"} <= set(
        signals
    )
    assert {f"bingo significance ({n})" for n in ("surprisal", "ktae", "counterfactual")} <= set(signals)
    # measurement 1 scores the credit form: the filter and +m1 stay, the loss mode goes
    assert {"oracle", "anti_oracle:mask", "entropy80+m1", "optimal_token_baseline"} <= set(signals)
    assert [r["method"] for r in result["learning"]] == [
        "grpo",
        "ktae",
        "counterfactual:inverted",
        "variance_weighted",
        "gym_test_half_credit",
        "grpo+qp+rb",
        "grpo+lr",
        "oracle",
        "anti_oracle:mask",
        "entropy80+m1",
        "optimal_token_baseline+clip_cov",
        "kl_cov",
    ]
    runs = {r["method"]: r for r in result["runs"]}
    for run in runs.values():  # held-out length at every evaluation, in tokens (eos included)
        assert [s for s, *_ in run["curve_length"]] == [s for s, _ in run["curve"]] == [0, 2]
        assert all(1 <= length <= 48 for _, length, _ in run["curve_length"])
        assert 1 <= run["final_greedy_length"] <= 48
    lr = runs["grpo+lr"]["metrics"]
    # the shaping saw the raw rewards; the first-seen anchors were set in step 1 and reused in step 2
    assert lr["length_reward/raw_score/mean"] == pytest.approx(lr["reward/mean"], abs=1e-6)
    assert lr["length_reward/shaped_score/mean"] != pytest.approx(lr["reward/mean"], abs=1e-3)
    assert lr["length_reward/anchor_prompts/count"] == 8 and lr["length_reward/anchor_new_prompts/count"] == 4
    assert not any(k.startswith("length_reward/") for k in runs["grpo"]["metrics"])
    # paired seeds: every method at seed 0 trained on the same prompts and sampled the same first step
    # (+rb draws twice the prompts)
    paired = {name: run["paired"] for name, run in runs.items() if "+rb" not in name}
    assert len({p["prompts"] for p in paired.values()}) == 1
    assert len({p["first_rollouts"] for p in paired.values()}) == 1
    # endpoints: AUC, paired differences to grpo (one seed: no interval), the validity check
    learn = {row["method"]: row for row in result["learning"]}
    for row in learn.values():
        assert row["auc"]["per_seed"].keys() == {"0"} and 0 <= row["auc"]["mean"] <= 1
        diff = row["auc"]["mean"] - learn["grpo"]["auc"]["mean"]
        assert row["vs_grpo"]["auc"]["per_seed"]["0"] == pytest.approx(diff)
        assert row["credit_efficiency"] is not None
    assert learn["grpo"]["vs_grpo"]["final"]["mean"] == 0.0
    validity = result["validity"]
    assert validity["passed"] is False and validity["oracle_vs_grpo"]["passed"] is False  # one seed: no CI
    assert {"eval_se", "seed_sd_auc", "ok"} <= result["noise"].keys()
    # the evaluation noise is measured: grpo and the oracle (only) were evaluated again with other
    # sampling seeds; at step 0 (the warm start for every method) both see the same samples
    for name in ("grpo", "oracle"):
        replicate = runs[name]["curve_replicate"]
        assert [s for s, _ in replicate] == [0, 2] and all(0 <= a <= 1 for _, a in replicate)
    assert runs["grpo"]["curve_replicate"][0] == runs["oracle"]["curve_replicate"][0]
    assert all(run["curve_replicate"] is None for name, run in runs.items() if name not in ("grpo", "oracle"))
    noise = result["noise"]
    assert noise["replicates"] == 1 and noise["eval_sd_auc"] >= 0
    assert noise["paired"]["replicates"] == 1 and noise["paired"]["eval_sd"] >= 0
    assert "validity check: FAILED" in capsys.readouterr().out
    assert 0.0 <= result["warm_start"]["pass_rate"] <= 1.0
    table = (out / "results.md").read_text()
    assert "| gym_test_half_credit |" in table and "AUC diff vs grpo" in table and "validity check" in table
    assert "### Held-out pass@1 per evaluation step" in table and "### Mean response length" in table
    assert (out / "credit_auc.png").read_bytes()[:4] == b"\x89PNG"
    # a second run reuses the warm-started model
    assert main([*argv, "--skip-learning"]) == 0
    assert json.loads((out / "results.json").read_text())["warm_start"]["cached"] is True
    # --workers 2: the same runs, computed in two spawned processes
    argv2 = ["gym", "--quick", "--out", str(out), "--estimators", "grpo", "oracle", "--train-prompts", "8"]
    assert main([*argv2, "--workers", "2"]) == 0
    parallel = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    for name in ("grpo", "oracle"):
        assert parallel[name]["curve"] == runs[name]["curve"]
        assert parallel[name]["final_greedy"] == runs[name]["final_greedy"]
        assert parallel[name]["paired"] == runs[name]["paired"]


def test_unknown_estimator_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["gym", "--quick", "--out", str(tmp_path), "--estimators", "no_such_estimator"])
    assert stop.value.code == 2
    assert "verl-credit gym: error: --estimators no_such_estimator: unknown" in capsys.readouterr().err
