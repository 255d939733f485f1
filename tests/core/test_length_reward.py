"""Significance-aware length reward (Bingo): formulas, group references, scorers, schedule."""

import math
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_credit.config import CreditConfig
from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.ktae import KTAEParams, key_token_values
from verl_credit.core.length_reward import (
    DynamicLambdaSchedule,
    LengthRewardConfig,
    PromptAnchors,
    ScorerInputs,
    SignificanceScorer,
    add_on_last_token,
    compute_length_reward,
    first_seen_reference_counts,
    first_seen_reference_counts_loop,
    get_scorer,
    group_reference_counts,
    group_reference_counts_loop,
    length_reward_metrics,
    length_reward_shaping,
    list_scorers,
    minmax_normalize,
    prompt_keys,
    resolve_scorer,
    run_scorer,
    significance_counts,
    significance_ratios,
    significance_scorer,
)

EXPLORE = 3.183098861837907  # 5 / (pi/2)
GROUP = LengthRewardConfig(anchor="group")  # the reference counts of the current group
FLOOR = -6.366197723675814  # -2 * 5 / (pi/2)


def _dense(rows, width=None, fill=0.0):
    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.float64)
        mask[i, : len(r)] = 1
    return out, mask


def _rm(outcomes, mask):
    """rm_scores with the outcome on the last valid token (verl's layout)."""
    return add_on_last_token(torch.zeros(mask.shape), mask, torch.tensor(outcomes, dtype=torch.float64))


# ------------------------------------------------------------------------------------ formulas


def test_shaping_formulas_against_hand_values():
    r_ins = torch.tensor([0.5, 2.0, 0.5, 0.0, 0.0])
    r_sig = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    correct = torch.tensor([True, True, False, False, False])
    d = length_reward_shaping(
        r_ins, r_sig, correct, torch.ones(5, dtype=torch.bool), lambda_c=5, lambda_wn=2, lambda_we=5, lambda_dyn=EXPLORE
    )
    assert d[0].item() == pytest.approx(4.387912809451864, abs=1e-12)  # 5 cos(0.5)
    assert d[1].item() == pytest.approx(0.0, abs=1e-12)  # r_ins clipped to pi/2: 5 cos(pi/2)
    assert d[2].item() == pytest.approx(-2.0617360143813475, abs=1e-12)  # 2 (cos .5 - 1) + 3.1831 - 5
    assert d[3].item() == pytest.approx(EXPLORE - 5, abs=1e-12)
    assert d[4].item() == -5.0
    # min(0, .): a large lambda_dyn never turns the penalty into a bonus
    big = length_reward_shaping(
        r_ins, r_sig, correct, torch.ones(5, dtype=torch.bool), lambda_c=5, lambda_wn=2, lambda_we=5, lambda_dyn=10.0
    )
    assert big[3].item() == 0.0 and big[2].item() == 0.0


def test_whole_pipeline_on_a_hand_computed_group():
    # row 0 correct: s^ = [0, 1, .2, .9] -> 2 insignificant, 2 significant
    # row 1 correct: [2, 4, 3] -> s^ = [0, 1, .5] -> 1 insignificant, 2 significant (.5 is not < .5)
    # row 2 wrong: constant -> s^ = 1 everywhere -> 0 insignificant, 6 significant
    scores, mask = _dense([[0.0, 1.0, 0.2, 0.9], [2.0, 4.0, 3.0], [1.0] * 6])
    groups = group_index_from_uids(["a", "a", "a"])
    res = compute_length_reward(scores, _rm([1, 1, 0], mask), mask, groups, GROUP, -0.5)
    assert res.n_insig.tolist() == [2, 1, 0] and res.n_sig.tolist() == [2, 2, 6]
    assert res.ref_insig.tolist() == [1.5] * 3 and res.ref_sig.tolist() == [2.0] * 3  # mean over correct rows
    torch.testing.assert_close(res.r_ins, torch.tensor([4 / 3, 2 / 3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(res.r_sig, torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64))
    expected = torch.tensor([1.176187866514947, 3.9294363038847404, -6.5], dtype=torch.float64)
    torch.testing.assert_close(res.shaping, expected, rtol=0, atol=1e-12)
    # the shaping lands on the last valid token, on top of the outcome reward
    assert res.shaped_rm_scores[0, 3].item() == pytest.approx(1 + 1.176187866514947, abs=1e-6)
    assert res.shaped_rm_scores[1, 2].item() == pytest.approx(1 + 3.9294363038847404, abs=1e-6)
    assert res.shaped_rm_scores[2, 5].item() == pytest.approx(-6.5, abs=1e-6)
    assert res.shaped_rm_scores[0, :3].abs().sum() == 0 and res.shaped_rm_scores.dtype == torch.float32
    assert res.insignificant[0].tolist() == [True, False, True, False, False, False]


def test_minmax_normalize_per_response():
    scores, mask = _dense([[3.0, 1.0, 2.0], [5.0, 5.0], [7.0]], fill=100.0)  # padding values must not count
    norm = minmax_normalize(scores, mask)
    torch.testing.assert_close(norm[0, :3], torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64))
    assert norm[1, :2].tolist() == [1.0, 1.0] and norm[2, 0].item() == 1.0  # constant -> all significant
    assert (norm[mask == 0] == 0).all()
    empty = minmax_normalize(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.long))
    assert (empty == 0).all() and torch.isfinite(empty).all()


def test_threshold_is_strict():
    norm = torch.tensor([[0.0, 0.49, 0.5, 1.0]], dtype=torch.float64)
    n_insig, n_sig, insig = significance_counts(norm, torch.ones(1, 4, dtype=torch.long), 0.5)
    assert n_insig.item() == 2 and n_sig.item() == 2 and insig[0].tolist() == [True, True, False, False]


# ---------------------------------------------------------------------------------- edge cases


def test_zero_reference_counts_give_zero_ratios():
    # every correct rollout has constant scores -> N_insig_ref = 0 -> r_ins = r_sig = 0 (authors' code)
    scores, mask = _dense([[1.0, 1.0], [2.0, 2.0, 2.0], [0.0, 1.0, 0.0]])
    res = compute_length_reward(scores, _rm([1, 1, 0], mask), mask, group_index_from_uids(["g"] * 3), GROUP, EXPLORE)
    assert res.ref_insig.tolist() == [0.0] * 3 and res.r_ins.tolist() == [0.0] * 3 and res.r_sig.tolist() == [0.0] * 3
    torch.testing.assert_close(res.shaping, torch.tensor([5.0, 5.0, -5.0], dtype=torch.float64))
    r_ins, r_sig = significance_ratios(
        *(torch.tensor([3.0, 2.0]),) * 2, torch.tensor([2.0, 0.0]), torch.tensor([1.0, 4.0])
    )
    assert r_ins.tolist() == [1.5, 0.0] and r_sig.tolist() == [3.0, 0.0]


def test_empty_responses_get_no_shaping_and_no_say_in_the_reference():
    scores, mask = _dense([[0.0, 1.0, 0.0, 1.0], [], [0.0, 1.0]], width=4)
    rm = _rm([1, 0, 1], mask)
    res = compute_length_reward(scores, rm, mask, group_index_from_uids(["g"] * 3), GROUP, EXPLORE)
    assert res.nonempty.tolist() == [True, False, True] and res.shaping[1].item() == 0.0
    assert res.ref_insig[0].item() == 1.5 and res.ref_sig[0].item() == 1.5  # rows 0 and 2 only
    assert (res.shaped_rm_scores[1] == 0).all()
    only_empty = compute_length_reward(
        torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), group_index_from_uids(["e", "e"]),
        GROUP, EXPLORE,
    )  # fmt: skip
    assert (only_empty.shaping == 0).all() and (only_empty.shaped_rm_scores == 0).all()


def test_all_wrong_group_uses_every_rollout_as_reference():
    scores, mask = _dense([[0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    res = compute_length_reward(scores, _rm([0, 0, 0], mask), mask, group_index_from_uids(["w"] * 3), GROUP, EXPLORE)
    assert res.ref_insig.tolist() == [4 / 3] * 3 and res.ref_sig.tolist() == [5 / 3] * 3
    assert (res.shaping <= 0).all() and not res.correct.any()
    # r_ins = (3/4, 3/2, 3/4), r_sig = (3/5, 6/5, 6/5); exploring (lambda_dyn > 0), more significant
    # tokens cost a wrong answer less; once penalising (lambda_dyn < 0) the longer one pays more
    expected = torch.tensor([-3.626762945149614, -3.0388069624591063, -1.71690362804687], dtype=torch.float64)
    torch.testing.assert_close(res.shaping, expected, rtol=0, atol=1e-12)
    late = compute_length_reward(scores, _rm([0, 0, 0], mask), mask, group_index_from_uids(["w"] * 3), GROUP, -0.5)
    expected = torch.tensor([-5.836622262252359, -7.458525596664594, -6.136622262252358], dtype=torch.float64)
    torch.testing.assert_close(late.shaping, expected, rtol=0, atol=1e-12)


def test_truncated_response_is_shaped_on_its_last_column():
    # a response that fills every position (no EOS: cut at max length)
    scores, mask = _dense([[0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 1.0]], width=5)
    res = compute_length_reward(
        scores, _rm([0, 1], mask), mask, group_index_from_uids(["t", "t"]), LengthRewardConfig(), EXPLORE
    )
    assert res.n_insig[0].item() == 3 and res.n_sig[0].item() == 2  # counted over all T positions
    assert res.shaped_rm_scores[0, 4].item() == pytest.approx(res.shaping[0].item(), abs=1e-6)
    assert res.shaping[0] < 0 and res.shaped_rm_scores[0, :4].abs().sum() == 0


def test_padding_rows_and_separate_groups():
    scores, mask = _dense([[0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 1.0]])
    groups = group_index_from_uids(["a", "a", "b", "pad1"])
    res = compute_length_reward(scores, _rm([1, 0, 1, 0], mask), mask, groups, GROUP, EXPLORE)
    assert res.ref_insig.tolist() == [1.0, 1.0, 3.0, 0.0]  # a: row 0 (correct); b: row 2; pad: none
    assert res.shaping[3].item() == 0.0 and res.real.tolist() == [True, True, True, False]
    assert res.r_ins[2].item() == 1.0  # a singleton group is its own reference


def test_nan_reward_is_named():
    scores, mask = _dense([[0.0, 1.0]])
    rm = _rm([float("nan")], mask)
    with pytest.raises(ValueError, match="rm_scores of rollout 0 is not finite"):
        compute_length_reward(scores, rm, mask, group_index_from_uids(["a"]), LengthRewardConfig(), 0.0)
    scores[0, 1] = float("inf")
    with pytest.raises(ValueError, match="significance score of rollout 0 at response position 1 is not finite"):
        compute_length_reward(scores, _rm([1.0], mask), mask, group_index_from_uids(["a"]), LengthRewardConfig(), 0.0)


# ------------------------------------------------------------------------------ vectorised = loop


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 9), st.integers(0, 9), st.booleans(), st.booleans()),
        min_size=1,
        max_size=30,
    )
)
def test_group_reference_counts_match_the_loop(rows):
    uids = [f"pad{i}" if g == 4 else f"u{g}" for i, (g, *_) in enumerate(rows)]
    n_insig = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    n_sig = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    correct = torch.tensor([r[3] for r in rows])
    nonempty = torch.tensor([r[4] for r in rows])
    fast = group_reference_counts(n_insig, n_sig, correct, nonempty, group_index_from_uids(uids))
    slow = group_reference_counts_loop(n_insig, n_sig, correct, nonempty, uids)
    torch.testing.assert_close(fast[0], slow[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(fast[1], slow[1], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------- ranking


def test_concise_correct_answer_beats_padded_correct_one():
    """Surprisal scorer: the padded answer repeats near-certain filler tokens (insignificant)."""
    concise = [-3.0, -0.2, -2.5, -1.8, -0.05]
    padded = concise + [-0.01] * 4
    wrong = [-2.0, -0.1, -0.02, -2.2, -0.03, -0.04]
    logp, mask = _dense([concise, padded, wrong, wrong[:4]])
    groups = group_index_from_uids(["q"] * 4)
    raw = _rm([1, 1, 0, 0], mask)
    inputs = ScorerInputs(response_mask=mask, fields={"old_log_probs": logp}, correct=raw.sum(-1) > 0, groups=groups)
    surprisal = get_scorer("surprisal")
    res = compute_length_reward(run_scorer(surprisal, inputs), raw, mask, groups, GROUP, EXPLORE)
    final = res.shaped_rm_scores.double().sum(-1)
    assert res.n_insig[1] > res.n_insig[0] and res.n_sig[1] == res.n_sig[0]
    assert final[0] > final[1] > 1.0  # both keep a bonus; the concise one a larger one
    assert final[2:].max() < final[:2].min()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 12), st.floats(0, 1), st.integers(0, 2**31)),
        min_size=2,
        max_size=16,
    ),
    st.floats(-8, 8),
    st.sampled_from(["first_seen", "group"]),
)
def test_a_wrong_answer_never_outranks_a_correct_one(rows, lambda_dyn, anchor):
    T = 12
    gen = torch.Generator().manual_seed(rows[0][3])
    uids = [f"g{r[0]}" for r in rows]
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        mask[i, : r[1]] = 1
    rewards = [1.0 if r[2] > 0.5 else 0.0 for r in rows]
    res = compute_length_reward(
        torch.randn(len(rows), T, generator=gen), _rm(rewards, mask), mask, group_index_from_uids(uids),
        LengthRewardConfig(anchor=anchor), lambda_dyn,
    )  # fmt: skip
    final = res.shaped_rm_scores.double().sum(-1)
    has_token = mask.sum(-1) > 0  # an empty response has nowhere to carry its reward
    corr, wrong = res.correct & has_token, ~res.correct & has_token
    if corr.any() and wrong.any():
        assert final[wrong].max() < final[corr].min()
    assert (res.shaping[res.correct] >= 0).all() and (res.shaping[~res.correct] <= 0).all()
    assert (res.shaping[res.correct] <= 5.0 + 1e-12).all()


# ------------------------------------------------------------------------------------- scorers


def test_builtin_scorers_registered():
    assert set(list_scorers()) >= {"surprisal", "ktae", "counterfactual"}
    assert get_scorer("surprisal").fields == ("old_log_probs",)
    with pytest.raises(ValueError, match="unknown scorer 'llmlingua'.*surprisal"):
        get_scorer("llmlingua")


def test_scorer_returning_nan_is_a_clear_error():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logp = torch.tensor([[-1.0, -2.0, float("nan")], [-1.0, float("nan"), -0.5]])  # masked NaN is fine
    inputs = ScorerInputs(mask, {"old_log_probs": logp}, torch.tensor([True, False]), group_index_from_uids("ab"))
    with pytest.raises(ValueError, match=r"scorer 'surprisal' returned nan for rollout 1 at response position 1"):
        run_scorer(get_scorer("surprisal"), inputs)
    bad_shape = SignificanceScorer("bad", lambda x: torch.zeros(3), fields=())
    with pytest.raises(ValueError, match=r"must return a Tensor of shape \(B, T\) = \(2, 3\)"):
        run_scorer(bad_shape, inputs)
    with pytest.raises(ValueError, match="needs batch field 'responses'"):
        run_scorer(get_scorer("ktae"), inputs)


def _cf_stage(rows):
    """Stage fields for rollouts given as (S(r), [(span, S(r without span))], answer) tuples."""
    S = max(len(spans) for _, spans, _ in rows)
    scores = torch.full((len(rows), S + 1), math.nan)
    spans_t = torch.full((len(rows), S, 2), -1, dtype=torch.long)
    answer = torch.full((len(rows), 2), -1, dtype=torch.long)
    for i, (base, spans, ans) in enumerate(rows):
        scores[i, 0] = base
        for k, (span, value) in enumerate(spans):
            spans_t[i, k] = torch.tensor(span)
            scores[i, k + 1] = value
        answer[i] = torch.tensor(ans)
    return {"credit_cf_scores": scores, "credit_cf_spans": spans_t, "credit_cf_answer": answer}


def test_counterfactual_scorer_ranks_concise_above_padded():
    """Padding a correct solution with spans whose removal leaves the answer's log-prob unchanged
    makes them insignificant (I_hat ~ 0), so the padded solution gains less than the concise one."""
    critical = [((0, 3), -5.0), ((3, 6), -4.9)]
    filler = [((6, 9), -1.0), ((9, 12), -1.1), ((12, 15), -0.9)]
    fields = _cf_stage(
        [
            (-1.0, critical, (6, 8)),  # concise, correct
            (-1.0, critical + filler, (15, 17)),  # padded, correct
            (-1.0, critical, (6, 8)),  # wrong
        ]
    )
    lengths = torch.tensor([8, 17, 8])
    mask = (torch.arange(17) < lengths.unsqueeze(1)).long()
    correct = torch.tensor([True, True, False])
    groups = group_index_from_uids("aaa")
    scorer = resolve_scorer("counterfactual")
    assert scorer.stage == "counterfactual" and not scorer.normalize
    assert scorer.all_fields == ("credit_cf_scores", "credit_cf_spans", "credit_cf_answer")
    sig = run_scorer(scorer, ScorerInputs(mask, fields, correct, groups))
    assert sig[0, :8].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # I_hat (1, 0); answer not measured
    rm = torch.zeros(3, 17)
    rm[0, 7], rm[1, 16] = 1.0, 1.0
    res = compute_length_reward(sig, rm, mask, groups, GROUP, EXPLORE, normalize=False)
    assert res.n_insig.tolist() == [5.0, 11.0, 5.0]  # + filler spans at I_hat 0.024, 0.049, 0; answers 2 each
    # reference = mean over the correct ones = 8 -> r_ins 0.625 and 1.375
    assert res.shaping[:2].tolist() == pytest.approx([5 * math.cos(0.625), 5 * math.cos(1.375)])
    final = res.shaped_rm_scores.sum(-1)
    assert final[0] > final[1] > final[2]


def test_counterfactual_scorer_needs_the_stage_fields():
    mask = torch.ones(1, 3, dtype=torch.long)
    inputs = ScorerInputs(mask, {"responses": torch.zeros(1, 3)}, torch.tensor([True]), group_index_from_uids("a"))
    with pytest.raises(ValueError, match="scorer 'counterfactual' needs batch field 'credit_cf_scores'"):
        run_scorer(get_scorer("counterfactual"), inputs)


def test_scorer_stage_is_declared_and_checked(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="stage must be one of"):
        SignificanceScorer("x", lambda i: i.response_mask, stage="reference")

    @significance_scorer(fields=("responses",), normalize=False, stage="counterfactual")
    def both(inputs):
        return inputs.response_mask.double()

    assert both.all_fields == ("responses", "credit_cf_scores", "credit_cf_spans", "credit_cf_answer")
    (tmp_path / "staged_scorer_mod.py").write_text(
        textwrap.dedent(
            """
            def score(inputs):
                return inputs.response_mask.double()
            score.stage = "counterfactual"

            def bad(inputs):
                return inputs.response_mask.double()
            bad.stage = "variance"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_scorer("staged_scorer_mod:score").stage == "counterfactual"
    with pytest.raises(ValueError, match=r"staged_scorer_mod:bad: its 'stage' must be one of"):
        resolve_scorer("staged_scorer_mod:bad")


def test_ktae_scorer_is_abs_key_token_value():
    gen = torch.Generator().manual_seed(0)
    responses = torch.randint(0, 6, (6, 5), generator=gen)
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[2, 3:] = 0
    correct = torch.tensor([True, False, True, False, True, False])
    groups = group_index_from_uids(["a"] * 3 + ["b"] * 3)
    params = KTAEParams(ignore_token_ids=[0])
    out = run_scorer(get_scorer("ktae"), ScorerInputs(mask, {"responses": responses}, correct, groups, params))
    K, _ = key_token_values(responses, mask, correct, groups, params)
    torch.testing.assert_close(out, (K.abs() * mask))
    assert (out > 0).any()


def test_user_scorer_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_significance.py").write_text(
        textwrap.dedent("""
        import torch
        from verl_credit.core.length_reward import significance_scorer

        @significance_scorer(fields=("responses",))
        def by_token_id(inputs):
            return inputs.fields["responses"].float()

        def plain(inputs):
            return inputs.response_mask.float()
        plain.fields = ("old_log_probs",)
        plain.normalize = False

        not_callable = 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        decorated = resolve_scorer("my_significance:by_token_id")
        assert decorated.fields == ("responses",) and decorated.normalize
        plain = resolve_scorer("my_significance:plain")
        assert plain.fields == ("old_log_probs",) and not plain.normalize and plain.name == "my_significance:plain"
        mask = torch.ones(2, 3, dtype=torch.long)
        inputs = ScorerInputs(mask, {"responses": torch.tensor([[5, 1, 3], [2, 2, 2]])}, torch.ones(2).bool(),
                              group_index_from_uids("aa"))  # fmt: skip
        assert run_scorer(decorated, inputs)[0].tolist() == [5.0, 1.0, 3.0]
        with pytest.raises(ValueError, match="expected a function"):
            resolve_scorer("my_significance:not_callable")
        with pytest.raises(ValueError, match="has no attribute 'nope'"):
            resolve_scorer("my_significance:nope")
        with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
            resolve_scorer("no_such_module_xyz:f")
    finally:
        sys.modules.pop("my_significance", None)


# -------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "values, key",
    [
        ({"lambda_c": -1}, "credit.length_reward.lambda_c"),
        ({"lambda_we": float("inf")}, "credit.length_reward.lambda_we"),
        ({"threshold": 1.5}, "credit.length_reward.threshold"),
        ({"scorer": "not a scorer"}, "credit.length_reward.scorer"),
        ({"scorer": "pkg.mod:"}, "credit.length_reward.scorer"),
        ({"schedule": "linear"}, "credit.length_reward.schedule"),
        ({"slope_period": 1}, "credit.length_reward.slope_period"),
        ({"slope_start_step": 0}, "credit.length_reward.slope_start_step"),
        ({"penalty_step": 0}, "credit.length_reward.penalty_step"),
        ({"enabled": "yes"}, "credit.length_reward.enabled"),
        ({"lamda_c": 1}, "credit.length_reward.lamda_c"),
        ({"anchor": "policy"}, "credit.length_reward.anchor"),
        ({"anchor_capacity": 0}, "credit.length_reward.anchor_capacity"),
        ({"anchor_capacity": 1.5}, "credit.length_reward.anchor_capacity"),
    ],
)
def test_config_errors_name_the_key(values, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        CreditConfig.from_dict({"length_reward": values})


def test_config_defaults_are_the_papers():
    lr = CreditConfig().length_reward
    assert (lr.enabled, lr.scorer, lr.threshold) == (False, "surprisal", 0.5)
    assert (lr.lambda_c, lr.lambda_wn, lr.lambda_we) == (5.0, 2.0, 5.0)
    assert (lr.schedule, lr.slope_start_step, lr.slope_period, lr.slope_threshold) == ("bingo", 50, 10, 2.5)
    assert (lr.anchor, lr.anchor_capacity) == ("first_seen", 100_000)
    assert CreditConfig.from_dict({"length_reward": {"scorer": "my_pkg.sig:score"}}).length_reward.scorer


# ------------------------------------------------------------------------------------ schedule


def _run(schedule, curve, start=1):
    """lambda_dyn used at each step of ``curve`` (the step's score is observed after its value)."""
    values = []
    for step, y in enumerate(curve, start=start):
        values.append(schedule.value_at(step))
        schedule.observe(step, 4 * y, 4)
    return values


def test_schedule_over_a_synthetic_score_curve():
    cfg = LengthRewardConfig(slope_start_step=5, slope_period=3)
    rising = [0.1 * s for s in range(1, 6)]  # steps 1..5: slope 0.1
    flat = [0.5] * 15  # steps 6..20
    again = [0.6, 0.7, 0.8]  # steps 21..23
    values = _run(DynamicLambdaSchedule(cfg), rising + flat + again)
    assert values[:5] == [pytest.approx(EXPLORE)] * 5  # explore until the slope is first measured
    assert values[5] == pytest.approx(EXPLORE)  # step 6: first slope (0.1) maps to explore > 2.5
    # step 7: window (0.4, 0.5, 0.5) has slope 0.05 -> scaled 1.59 <= 2.5: first flat step
    expected_flat = [max(FLOOR, -0.5 * k) for k in range(1, 15)]
    assert values[6:20] == pytest.approx(expected_flat)
    assert values[19] == pytest.approx(FLOOR)  # floored at -2 lambda_we / (pi/2)
    # step 21 still flat (window 0.5, 0.5, 0.5); step 22 window (.5, .5, .6): slope .05 -> flat;
    # step 23 window (.5, .6, .7): slope 0.1 -> scaled = explore > 2.5: back to exploring
    assert values[20:23] == pytest.approx([FLOOR, FLOOR, EXPLORE])


def test_schedule_before_start_and_constant_mode():
    curve = [0.0] * 10
    assert _run(DynamicLambdaSchedule(LengthRewardConfig()), curve) == [pytest.approx(EXPLORE)] * 10
    constant = DynamicLambdaSchedule(LengthRewardConfig(schedule="constant", slope_start_step=2))
    assert _run(constant, [0.1 * s for s in range(30)]) == [pytest.approx(EXPLORE)] * 30
    assert not constant.active


def test_schedule_falling_first_slope_penalises_at_once():
    values = _run(DynamicLambdaSchedule(LengthRewardConfig(slope_start_step=3, slope_period=2)), [0.9, 0.8, 0.7, 0.6])
    assert values == pytest.approx([EXPLORE, EXPLORE, EXPLORE, -0.5])  # scaled slope = -explore <= 2.5


def test_schedule_accumulates_calls_within_a_step():
    s = DynamicLambdaSchedule(LengthRewardConfig(slope_start_step=10))
    s.observe(1, 0.0, 4)
    s.observe(2, 3.0, 4)
    s.observe(2, 1.0, 2)  # parameter_sync_step > 1: step 2's score is 4 / 6 over its 6 rollouts
    s.observe(3, 0.0, 0)  # a step without real rollouts adds no point
    assert s.value_at(5) == pytest.approx(EXPLORE) and s.history == [(1, 0.0), (2, pytest.approx(4 / 6))]
    assert s.steps_seen == 2
    with pytest.raises(ValueError, match="steps must not go back"):
        s.observe(1, 0.0, 1)


def test_schedule_one_point_window_has_zero_slope():
    # at slope_start_step with only 2 steps seen the window is min(period, 2 - 1) = 1 point: slope 0,
    # which the authors' rule reads as flat (scale = explore when the first slope is 0)
    s = DynamicLambdaSchedule(LengthRewardConfig(slope_start_step=2, slope_period=5))
    assert _run(s, [0.0, 1.0, 2.0]) == pytest.approx([EXPLORE, EXPLORE, -0.5])
    assert s.initial_slope == 0.0 and s.slope_scale == pytest.approx(EXPLORE)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=40), st.integers(1, 39))
def test_schedule_state_round_trip_continues_like_an_uninterrupted_run(curve, cut):
    cut = min(cut, len(curve) - 1)
    cfg = LengthRewardConfig(slope_start_step=4, slope_period=3)
    full = _run(DynamicLambdaSchedule(cfg), curve)
    first = DynamicLambdaSchedule(cfg)
    head = _run(first, curve[:cut])
    resumed = DynamicLambdaSchedule(cfg)
    resumed.load_state_dict(first.state_dict())
    assert head + _run(resumed, curve[cut:], start=cut + 1) == full


def test_schedule_state_rejects_bad_keys():
    with pytest.raises(ValueError, match="missing keys"):
        DynamicLambdaSchedule(LengthRewardConfig()).load_state_dict({"value": 1.0})


# -------------------------------------------------------------------------------------- metrics


def test_metric_names_and_values():
    scores, mask = _dense([[0.0, 1.0, 0.2, 0.9], [2.0, 4.0, 3.0], [1.0] * 6, []], width=6)
    groups = group_index_from_uids(["a", "a", "a", "a"])
    res = compute_length_reward(scores, _rm([1, 1, 0, 0], mask), mask, groups, GROUP, -0.5)
    metrics = length_reward_metrics(res)
    metrics.update(DynamicLambdaSchedule(LengthRewardConfig()).metrics())
    for name in metrics:
        assert name.startswith("length_reward/") and name.count("/") == 2
        assert "min" not in name and "max" not in name, name  # verl reduces those with min/max
    assert metrics["length_reward/insignificant_tokens/mean"] == pytest.approx(1.0)  # (2 + 1 + 0) / 3
    assert metrics["length_reward/significant_ratio/mean"] == pytest.approx((2 / 4 + 2 / 3 + 1) / 3)
    assert metrics["length_reward/shaping_correct/mean"] == pytest.approx((1.176187866514947 + 3.9294363038847404) / 2)
    assert metrics["length_reward/shaping_incorrect/mean"] == pytest.approx(-6.5)
    assert metrics["length_reward/lambda_dyn/value"] == -0.5
    assert metrics["length_reward/empty_responses/count"] == 1.0
    assert math.isfinite(sum(metrics.values()))


# ------------------------------------------------------------------------------ first-seen anchor


def _counts_batch(insig, correct, width=24):
    """Significance scores with ``insig[i]`` insignificant tokens (score 0) then 2 significant (score 1)."""
    rows = [[0.0] * n + [1.0, 1.0] for n in insig]
    scores, mask = _dense(rows, width=width)
    return scores, _rm([1.0 if c else 0.0 for c in correct], mask), mask


def _step(insig, correct, anchors, config, key="P", uid="u"):
    scores, rm, mask = _counts_batch(insig, correct)
    uids = [uid] * len(insig)
    return compute_length_reward(
        scores, rm, mask, group_index_from_uids(uids), config, EXPLORE, anchors=anchors, prompt_keys=[key] * len(insig)
    )


def test_first_seen_anchor_is_the_first_groups_mean_over_every_rollout():
    anchors = PromptAnchors()
    # first sight: 1 correct rollout with 4 insignificant tokens, 3 wrong ones with 6, 8, 10
    first = _step([4, 6, 8, 10], [True, False, False, False], anchors, LengthRewardConfig())
    assert first.ref_insig.tolist() == [7.0] * 4 and first.ref_sig.tolist() == [2.0] * 4
    assert first.r_ins[0].item() == pytest.approx(4 / 7)  # the lone correct rollout is not its own reference
    assert first.new_anchors == 1 and len(anchors) == 1
    group = _step([4, 6, 8, 10], [True, False, False, False], None, GROUP)
    assert group.r_ins[0].item() == 1.0 and group.shaping[0].item() == pytest.approx(5 * math.cos(1.0))


def test_more_insignificant_tokens_than_the_anchor_earn_less_also_for_a_lone_correct_rollout():
    anchors = PromptAnchors()
    _step([6, 6, 6, 6], [True, True, False, False], anchors, LengthRewardConfig(), uid="step1")
    bonus = {}
    for n in (3, 6, 9):  # later visits: the only correct rollout of its group writes n insignificant tokens
        res = _step([n, 20, 20, 20], [True, False, False, False], anchors, LengthRewardConfig(), uid=f"n{n}")
        assert res.ref_insig[0].item() == 6.0 and res.new_anchors == 0
        bonus[n] = res.shaping[0].item()
        assert bonus[n] == pytest.approx(5 * math.cos(n / 6))
        moving = _step([n, 20, 20, 20], [True, False, False, False], None, GROUP, uid=f"g{n}")
        assert moving.shaping[0].item() == pytest.approx(5 * math.cos(1.0))  # group: the same whatever n
    assert bonus[3] > bonus[6] > bonus[9]


def test_first_seen_keeps_the_pressure_as_the_policy_compresses():
    """The paper's intent: as answers shrink, r_ins falls below 1 and the bonus grows; a group anchor
    follows the policy down and keeps r_ins at 1 (the pressure is gone)."""
    anchors = PromptAnchors()
    fixed, moving = [], []
    for visit, n in enumerate([12, 9, 6, 3]):  # the policy writes fewer insignificant tokens each visit
        insig, correct = [n, n + 1, n + 2, n + 3], [True, True, True, False]
        fixed.append(_step(insig, correct, anchors, LengthRewardConfig(), uid=f"v{visit}").r_ins[:3].mean().item())
        moving.append(_step(insig, correct, None, GROUP, uid=f"w{visit}").r_ins[:3].mean().item())
    assert fixed[0] == pytest.approx(13 / 13.5, rel=1e-6)  # first sight: the mean of all four rollouts
    assert all(a > b for a, b in zip(fixed, fixed[1:], strict=False)) and fixed[-1] < 0.35
    assert all(m == pytest.approx(1.0) for m in moving)


def test_groups_of_one_batch_share_their_prompts_anchor():
    anchors = PromptAnchors()
    scores, rm, mask = _counts_batch([2, 4, 8, 8, 1], [True, False, True, True, True])
    uids = ["b", "b", "a", "a", "c"]  # a and b share a prompt; b comes first in the batch and anchors it
    keys = ["P", "P", "P", "P", "Q"]
    res = compute_length_reward(
        scores, rm, mask, group_index_from_uids(uids), LengthRewardConfig(), EXPLORE, anchors=anchors, prompt_keys=keys
    )
    assert res.ref_insig.tolist() == [3.0, 3.0, 3.0, 3.0, 1.0] and res.new_anchors == 2
    with pytest.raises(ValueError, match="rollout 1: its prompt differs from the rest of its group"):
        compute_length_reward(
            scores, rm, mask, group_index_from_uids(uids), LengthRewardConfig(), EXPLORE,
            anchors=anchors, prompt_keys=["P", "Q", "P", "P", "Q"],
        )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 9), st.integers(0, 9), st.booleans()),
            min_size=1,
            max_size=12,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_first_seen_counts_match_the_loop_over_several_steps(steps):
    """(uid, prompt, N_insig, N_sig, nonempty) rows; uid 5 is padding; prompts repeat across steps."""
    anchors, store = PromptAnchors(), {}
    for step, rows in enumerate(steps):
        uids = ["pad" if r[0] == 5 else f"s{step}u{r[0]}" for r in rows]
        prompt_of = {u: r[1] for u, r in zip(uids, rows, strict=True)}  # one prompt per group
        keys = [f"p{prompt_of[u]}" for u in uids]
        n_insig = torch.tensor([r[2] for r in rows], dtype=torch.float64)
        n_sig = torch.tensor([r[3] for r in rows], dtype=torch.float64)
        nonempty = torch.tensor([r[4] for r in rows])
        fast_ins, fast_sig, _ = first_seen_reference_counts(
            n_insig, n_sig, nonempty, group_index_from_uids(uids), keys, anchors
        )
        slow_ins, slow_sig = first_seen_reference_counts_loop(n_insig, n_sig, nonempty, uids, keys, store)
        torch.testing.assert_close(fast_ins, slow_ins, rtol=0, atol=1e-12)
        torch.testing.assert_close(fast_sig, slow_sig, rtol=0, atol=1e-12)
    assert dict(anchors.entries) == store


def test_anchor_store_is_bounded_counts_evictions_and_round_trips():
    import json

    anchors = PromptAnchors(capacity=2)
    one = torch.ones(1, dtype=torch.bool)
    for key, n in (("a", 1.0), ("b", 2.0), ("a", 9.0), ("c", 3.0)):  # "a" used again: "b" is the oldest
        anchors.resolve([key], torch.tensor([n]), torch.tensor([n]), one)
    assert list(anchors.entries) == ["a", "c"] and anchors.evictions == 1
    assert anchors.entries["a"] == (1.0, 1.0)  # seen again: keeps its first counts
    assert anchors.metrics() == {
        "length_reward/anchor_prompts/count": 2.0,
        "length_reward/anchor_evictions/count": 1.0,
    }
    restored = PromptAnchors(capacity=2)
    restored.load_state_dict(json.loads(json.dumps(anchors.state_dict())))
    assert restored.entries == anchors.entries and restored.evictions == 1
    smaller = PromptAnchors(capacity=1)
    smaller.load_state_dict(anchors.state_dict())
    assert list(smaller.entries) == ["c"] and smaller.evictions == 2
    with pytest.raises(ValueError, match="anchor state"):
        restored.load_state_dict({"entries": []})
    # a group without a non-empty rollout anchors nothing
    ins, _, new = anchors.resolve(["d"], torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([False]))
    assert ins.item() == 0.0 and not new.item() and "d" not in anchors.entries


def test_prompt_keys_are_stable_and_distinct():
    a = torch.tensor([5, 6, 7])
    keys = prompt_keys([a, a.clone().int(), torch.tensor([5, 6]), torch.tensor([5, 6, 7, 0])])
    assert keys[0] == keys[1] and len(set(keys)) == 3 and len(keys[0]) == 32
    assert keys[0] == prompt_keys([torch.tensor([5, 6, 7])])[0]  # no per-process salt
