"""The Python API without verl: docs/python_api.md runs as written; ``CreditBatch.from_outcomes``
names the argument it rejects; ``counterfactual`` refuses to pass plain GRPO off as the method."""

import math
import re
from pathlib import Path

import pytest
import torch

import verl_credit
from verl_credit import CreditBatch, EstimatorContext, compute_advantages
from verl_credit.estimators import grpo_outcome

ROOT = Path(__file__).resolve().parents[1]


def _docs_code() -> str:
    text = (ROOT / "docs" / "python_api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4, "docs/python_api.md lost its examples"
    return "\n".join(blocks)


def test_docs_example_runs(capsys):
    namespace: dict = {}
    if "docs_front_loaded" in verl_credit.list_estimators():  # a rerun in the same process
        from verl_credit.registry import _REGISTRY

        _REGISTRY.pop("docs_front_loaded")
    exec(compile(_docs_code(), "docs/python_api.md", "exec"), namespace)  # noqa: S102 (our own docs)
    printed = capsys.readouterr().out
    assert "rewards has 3 entries for 4 rollouts" in printed
    assert "estimator 'counterfactual' needs the scoring stage's fields" in printed
    batch, out = namespace["batch"], namespace["out"]
    assert batch.token_level_rewards.tolist() == [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    # the counterfactual example: conserve_gradient gives mean 1 over each rollout's valid tokens
    mask = batch.response_mask.bool()
    for i in range(4):
        assert float(out.token_weights[i][mask[i]].mean()) == pytest.approx(1.0)
    assert out.token_weights[2].tolist() == [1.0] * 4  # not scored
    grpo = grpo_outcome(batch, namespace["ctx"]).advantages
    torch.testing.assert_close(out.advantages, grpo * out.token_weights)


def _inputs():
    responses = torch.tensor([[3, 4, 5], [3, 6, 0], [7, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    return responses, mask, torch.tensor([1.0, 0.0, 1.0]), ["a", "a", "b"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"responses": torch.tensor([3, 4, 5])}, r"responses must have 2 dimension\(s\) \(B, T\), got shape \(3,\)"),
        ({"responses": torch.ones(3, 3)}, r"responses must have an integer dtype, got torch.float32"),
        ({"responses": [[3, 4, 5]] * 3}, r"responses must be a torch.Tensor, got list"),
        ({"response_mask": torch.ones(3, 4, dtype=torch.long)}, r"response_mask has shape \(3, 4\); expected \(3, 3\)"),
        ({"response_mask": torch.full((3, 3), 2)}, r"response_mask must hold only 0 and 1"),
        ({"response_mask": torch.ones(3, 3)}, r"response_mask must have an integer or bool dtype, got torch.float32"),
        ({"rewards": torch.tensor([1.0, 0.0])}, r"rewards has 2 entries for 3 rollouts"),
        ({"rewards": torch.zeros(3, 3)}, r"rewards must have 1 dimension\(s\) \(B,\), got shape \(3, 3\)"),
        ({"rewards": [1.0, 0.0, 1.0]}, r"rewards must be a torch.Tensor, got list"),
        ({"uids": ["a", "a"]}, r"uids must hold one prompt-group id per rollout \(3\), got 2 entries"),
        ({"uids": "aab"}, r"uids must hold one prompt-group id per rollout \(3\), got a string"),
    ],
)
def test_from_outcomes_names_the_argument(change, message):
    responses, mask, rewards, uids = _inputs()
    kwargs = {"responses": responses, "response_mask": mask, "rewards": rewards, "uids": uids, **change}
    with pytest.raises(ValueError, match=message):
        CreditBatch.from_outcomes(**kwargs)


def test_from_outcomes_accepts_bool_masks_integer_rewards_and_holes():
    responses, mask, _, uids = _inputs()
    batch = CreditBatch.from_outcomes(responses, mask.bool(), torch.tensor([1, 0, 1]), uids)
    assert batch.token_level_rewards.tolist() == [[0, 0, 1.0], [0, 0, 0], [1.0, 0, 0]]
    # a mask with a hole (a masked tool output mid-response): the reward goes on the last valid token
    holed = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 0]])
    batch = CreditBatch.from_outcomes(responses, holed, torch.tensor([1.0, 0.5, 1.0]), uids)
    assert batch.token_level_rewards.tolist() == [[0, 0, 1.0], [0, 0.5, 0], [0, 0, 0]]


def test_constructor_checks_token_level_rewards_shape():
    responses, mask, rewards, uids = _inputs()
    with pytest.raises(ValueError, match=r"token_level_rewards' has shape \(3,\), expected \(3, 3\)"):
        CreditBatch(responses, mask, rewards, uids)


def test_counterfactual_without_the_stage_fields_raises():
    responses, mask, rewards, uids = _inputs()
    batch = CreditBatch.from_outcomes(responses, mask, rewards, uids)
    with pytest.raises(ValueError, match=r"needs the scoring stage's fields .*missing 'credit_cf_scores'"):
        compute_advantages("counterfactual", batch, EstimatorContext())
    batch.fields["credit_cf_scores"] = torch.full((3, 2), math.nan)  # one of three is not enough
    with pytest.raises(ValueError, match=r"missing 'credit_cf_spans'"):
        compute_advantages("counterfactual", batch, EstimatorContext())
    # the uniform control needs no stage: its weights are all 1, so GRPO is the method
    uniform = verl_credit.CreditConfig.from_dict({"counterfactual": {"mode": "uniform"}})
    out = compute_advantages("counterfactual", batch, EstimatorContext(config=uniform))
    torch.testing.assert_close(out.advantages, grpo_outcome(batch, EstimatorContext()).advantages)
