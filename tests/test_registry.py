"""The plugin registry: built-ins, a user's own estimator, and the checks on what comes back."""

import math

import pytest
import torch

import verl_credit
from verl_credit import CreditBatch, CreditOutput, EstimatorContext, compute_advantages, register_estimator
from verl_credit.core.groups import group_outcome_advantage
from verl_credit.registry import _REGISTRY


def _batch():
    responses = torch.tensor([[3, 4, 5], [3, 6, 0], [7, 8, 9], [7, 1, 1], [2, 2, 2]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    rewards = torch.zeros(5, 3)
    rewards[0, 2], rewards[2, 2] = 1.0, 1.0
    return CreditBatch(responses, mask, rewards, ["a", "a", "b", "b", "pad0"])


@pytest.fixture
def user_estimator():
    """A user's estimator: the GRPO advantage scaled down on long responses."""

    @register_estimator("test_length_scaled", fields=("old_log_probs",))
    def length_scaled(batch: CreditBatch, ctx: EstimatorContext) -> CreditOutput:
        z = group_outcome_advantage(batch.scores, batch.groups, ctx.norm_adv_by_std)
        lengths = batch.response_mask.sum(-1, keepdim=True).clamp_min(1).float()
        scale = ctx.config.estimator_kwargs.get("scale", 1.0)
        return CreditOutput(
            advantages=scale * z[:, None] * batch.response_mask / lengths,
            metrics={"length/mean": float(lengths.mean())},
        )

    yield "test_length_scaled"
    _REGISTRY.pop("test_length_scaled", None)


def test_builtins_are_registered():
    assert "ktae" in verl_credit.list_estimators()
    assert verl_credit.get_estimator("ktae").description.startswith("KTAE")


def test_user_estimator_runs_through_the_same_path(user_estimator):
    spec = verl_credit.get_estimator(user_estimator)
    assert spec.fields == ("old_log_probs",)
    ctx = EstimatorContext(config=verl_credit.CreditConfig(estimator_kwargs={"scale": 2.0}))
    out = compute_advantages(user_estimator, _batch(), ctx)
    z = 0.5 / (math.sqrt(0.5) + 1e-6)  # rewards (1, 0): mean 0.5, unbiased std sqrt(1/2)
    assert out.advantages[0, 0].item() == pytest.approx(2.0 * z / 3, rel=1e-5)
    assert out.advantages[1, 2] == 0  # masked position zeroed by the registry
    assert (out.advantages[4] == 0).all()  # padding row
    assert out.returns is out.advantages
    assert out.metrics["length/mean"] > 0


def test_duplicate_reserved_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("ktae")(lambda b, c: None)
    with pytest.raises(ValueError, match="verl's own"):
        register_estimator("grpo")
    with pytest.raises(ValueError, match="unknown field"):
        register_estimator("x_fields", fields=("token_ids",))
    with pytest.raises(KeyError, match="registered: .*ktae"):
        verl_credit.get_estimator("ktea")


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda b: torch.zeros(2, 2), "shape"),
        (lambda b: torch.full(b.responses.shape, float("nan")), "non-finite advantages for rollout 0"),
    ],
)
def test_bad_estimator_output_is_reported(bad, message):
    @register_estimator("test_bad_output")
    def broken(batch, ctx):
        return CreditOutput(advantages=bad(batch))

    try:
        with pytest.raises(ValueError, match=message):
            compute_advantages("test_bad_output", _batch(), EstimatorContext())
    finally:
        _REGISTRY.pop("test_bad_output", None)


def test_batch_validation_names_fields():
    r = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="'response_mask'"):
        CreditBatch(r, torch.ones(2, 4), torch.zeros(2, 3), ["a", "a"])
    with pytest.raises(ValueError, match="'uid'"):
        CreditBatch(r, torch.ones(2, 3), torch.zeros(2, 3), None)
    with pytest.raises(ValueError, match="'uid' has 1 entries"):
        CreditBatch(r, torch.ones(2, 3), torch.zeros(2, 3), ["a"])
    nan = torch.zeros(2, 3)
    nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"rollout 1 \(uid 'b'\)"):
        CreditBatch(r, torch.ones(2, 3), nan, ["a", "b"])


def test_ktae_estimator_uses_tokenizer_ids_by_default_and_metric_names():
    batch = _batch()
    # token 4 appears only in the correct rollout of group "a": K != 0 unless ignored
    out = compute_advantages("ktae", batch, EstimatorContext(special_token_ids=(4,)))
    assert out.diagnostics["key_token_values"][0, 1] == 0  # the tokenizer's ids are ignored by default
    out2 = compute_advantages(
        "ktae", batch, EstimatorContext(config=verl_credit.CreditConfig.from_dict({"ktae": {"ignore_token_ids": []}}))
    )
    assert out2.diagnostics["key_token_values"][0, 1] > 0
    # verl reduces metrics by substring: a name containing "min"/"max" would be reduced with min/max
    for name in out.metrics:
        assert "min" not in name and "max" not in name, name


def test_counterfactual_weights_leave_unscored_rollouts_at_one():
    """A rollout the stage did not score keeps weight 1 everywhere, its detected answer included."""
    from verl_credit.scoring import CounterfactualConfig
    from verl_credit.weighting import apply_counterfactual_weights

    batch = _batch()
    nan = math.nan
    batch.fields.update(
        credit_cf_scores=torch.tensor([[-2.0, -3.0], [nan, nan], [-1.0, -1.5], [nan, nan], [nan, nan]]),
        credit_cf_spans=torch.tensor([[[0, 1]], [[0, 1]], [[0, 1]], [[-1, -1]], [[-1, -1]]]),
        credit_cf_answer=torch.tensor([[2, 3], [1, 2], [2, 3], [-1, -1], [-1, -1]]),
    )
    out = compute_advantages("counterfactual", batch, EstimatorContext())
    out = apply_counterfactual_weights(out, batch, CounterfactualConfig())
    assert out.token_weights[1].tolist() == [1.0, 1.0, 1.0]  # spans and answer found, not scored
    assert out.token_weights[0].tolist() == [1.25, 1.0, 1.5]  # one span: I_hat 0.5 -> 0.5 + 0.5 * 1.5
    assert out.metrics["counterfactual/rollouts_weighted/count"] == 2.0


def test_conserve_gradient_rescales_scored_rollouts_only():
    """credit.counterfactual.conserve_gradient: each scored rollout's weights have mean 1 over its
    valid tokens; unscored rollouts keep weight 1 everywhere; the advantages carry the same weights."""
    from verl_credit.scoring import CounterfactualConfig
    from verl_credit.weighting import apply_counterfactual_weights

    batch = _batch()
    nan = math.nan
    batch.fields.update(
        credit_cf_scores=torch.tensor([[-2.0, -3.0], [nan, nan], [-1.0, -1.5], [nan, nan], [nan, nan]]),
        credit_cf_spans=torch.tensor([[[0, 1]], [[0, 1]], [[0, 1]], [[-1, -1]], [[-1, -1]]]),
        credit_cf_answer=torch.tensor([[2, 3], [1, 2], [2, 3], [-1, -1], [-1, -1]]),
    )
    cfg = verl_credit.CreditConfig.from_dict({"counterfactual": {"conserve_gradient": True}}).counterfactual
    assert cfg.conserve_gradient and not CounterfactualConfig().conserve_gradient
    base = compute_advantages("counterfactual", batch, EstimatorContext())
    plain = base.advantages.clone()
    out = apply_counterfactual_weights(base, batch, cfg)
    assert out.token_weights[0].tolist() == pytest.approx([1.25 / 1.25, 1.0 / 1.25, 1.5 / 1.25])  # sum 3.75 -> 3
    assert out.token_weights[1].tolist() == [1.0, 1.0, 1.0]
    mask = batch.response_mask.bool()
    for i in (0, 2):
        assert float(out.token_weights[i][mask[i]].mean()) == pytest.approx(1.0)
    torch.testing.assert_close(out.advantages, plain * out.token_weights)
    with pytest.raises(ValueError, match="credit.counterfactual.conserve_gradient"):
        verl_credit.CreditConfig.from_dict({"counterfactual": {"conserve_gradient": "on"}})


def test_batch_from_outcomes_puts_the_reward_on_the_last_valid_token():
    responses = torch.tensor([[3, 4, 5], [3, 6, 0], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    batch = CreditBatch.from_outcomes(responses, mask, torch.tensor([1.0, 0.5, 1.0]), ["a", "a", "b"])
    assert batch.token_level_rewards.tolist() == [[0, 0, 1.0], [0, 0.5, 0], [0, 0, 0]]  # empty: no token
