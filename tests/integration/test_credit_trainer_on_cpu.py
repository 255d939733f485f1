"""CreditPPOTrainer._compute_advantage on a real TransferQueue (local Ray, CPU), as verl calls it."""

import sys
import textwrap
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transfer_queue as tq
from hydra import compose, initialize_config_module
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

import verl_credit.main_ppo  # noqa: F401  (registers the credit schema)
from verl_credit import CreditOutput, register_estimator
from verl_credit.core.groups import group_index_from_uids, group_outcome_advantage
from verl_credit.core.ktae import KTAEParams, ktae_advantages
from verl_credit.integration.tq_batch import _check_single_output_sessions
from verl_credit.integration.trainer import CreditPPOTrainer, validate_run_config
from verl_credit.registry import _REGISTRY

PAD_ID, EOS_ID = 0, 1


def _config(*overrides):
    with initialize_config_module("verl_credit.conf", version_base=None):
        return compose("credit_trainer", overrides=["actor_rollout_ref.rollout.n=4", *overrides])


def _trainer(config):
    """The trainer as verl builds it, minus the workers: what ``__init__`` sets that the step reads."""
    trainer = CreditPPOTrainer.__new__(CreditPPOTrainer)
    trainer.credit_config = validate_run_config(config)
    trainer.config = config
    trainer.tokenizer = SimpleNamespace(pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    trainer.global_steps = 1
    return trainer


def _rollouts(seed, n_groups=3, n=4, vocab=50):
    g = torch.Generator().manual_seed(seed)
    uids = [uuid.uuid4().hex for _ in range(n_groups) for _ in range(n)]
    uids = [uids[i - i % n] for i in range(len(uids))]
    prompts = [
        torch.randint(2, vocab, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist() for _ in uids
    ]
    responses = []
    for _ in uids:
        length = int(torch.randint(1, 12, (1,), generator=g))
        responses.append(torch.randint(2, vocab, (length,), generator=g).tolist() + [EOS_ID])
    scores = (torch.rand(len(uids), generator=g) < 0.5).float().tolist()
    scores[0], scores[1] = 1.0, 0.0  # the first group is mixed
    return prompts, responses, scores, uids


def _put(local_tq, prompts, responses, scores, uids, pad_to=16):
    batch = local_tq.put_rollouts(prompts, responses, scores, uids)
    batch = local_tq.add_padding(batch, pad_to, EOS_ID)
    return local_tq.copy_rollout_log_probs_to_old(batch)


def _read(batch, *fields):
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(fields))
    return data.to_padded_tensor()


def _dense(rows, width):
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_ktae_through_the_trainer_matches_the_core(local_tq, seed):
    prompts, responses, scores, uids = _rollouts(seed)
    batch = _put(local_tq, prompts, responses, scores, uids)
    assert len(batch) == 16 and sum(t.get("is_padding", False) for t in batch.tags) == 4
    metrics = {}
    _trainer(_config("algorithm.adv_estimator=ktae"))._compute_advantage(batch, metrics)

    out = _read(batch, "advantages", "returns", "response_mask")
    T = out["advantages"].shape[1]
    B = len(uids)
    resp = _dense(responses, T)
    mask = _dense([[1] * len(r) for r in responses], T)
    expected = ktae_advantages(
        resp, mask, torch.tensor(scores), group_index_from_uids(uids), KTAEParams(ignore_token_ids=[PAD_ID, EOS_ID])
    ).advantages
    torch.testing.assert_close(out["advantages"][:B], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["returns"], out["advantages"])
    assert (out["advantages"][B:] == 0).all()  # verl's padding rows
    assert (out["advantages"][:B][mask == 0] == 0).all()
    assert (out["advantages"][:B] != out["advantages"][:B, :1] * mask).any()  # token-level, not constant
    assert metrics["credit/ktae/mixed_groups/fraction"] > 0


def test_stock_estimator_falls_through_to_verl(local_tq):
    prompts, responses, scores, uids = _rollouts(3)
    batch = _put(local_tq, prompts, responses, scores, uids)
    _trainer(_config("algorithm.adv_estimator=grpo"))._compute_advantage(batch, {})
    out = _read(batch, "advantages", "rm_scores", "response_mask", "uid")
    ref, _ = compute_grpo_outcome_advantage(
        out["rm_scores"], out["response_mask"], np.array(out.get("uid").tolist(), dtype=object)
    )
    torch.testing.assert_close(out["advantages"], ref)


def test_user_estimator_defined_here_gets_declared_fields(local_tq):
    seen = {}

    @register_estimator("test_trainer_user_est", fields=("old_log_probs",))
    def user_est(batch, ctx):
        seen["old_log_probs"] = batch.old_log_probs
        seen["scale"] = ctx.config.estimator_kwargs["scale"]
        z = group_outcome_advantage(batch.scores, batch.groups, ctx.norm_adv_by_std)
        return CreditOutput(advantages=ctx.config.estimator_kwargs["scale"] * z[:, None] * batch.response_mask)

    try:
        prompts, responses, scores, uids = _rollouts(4)
        batch = _put(local_tq, prompts, responses, scores, uids)
        config = _config("algorithm.adv_estimator=test_trainer_user_est", "+credit.estimator_kwargs.scale=3.0")
        _trainer(config)._compute_advantage(batch, {})
        out = _read(batch, "advantages", "rm_scores", "response_mask", "uid")
        ref, _ = compute_grpo_outcome_advantage(
            out["rm_scores"], out["response_mask"], np.array(out.get("uid").tolist(), dtype=object)
        )
        B = len(uids)
        torch.testing.assert_close(out["advantages"][:B], 3.0 * ref[:B], rtol=1e-5, atol=1e-5)
        assert seen["scale"] == 3.0 and seen["old_log_probs"].shape == out["advantages"].shape
    finally:
        _REGISTRY.pop("test_trainer_user_est", None)


def test_user_estimator_from_import_modules(local_tq, tmp_path, monkeypatch):
    module = tmp_path / "my_credit_estimators.py"
    module.write_text(
        textwrap.dedent("""
        import verl_credit

        @verl_credit.register_estimator("test_from_module")
        def negated(batch, ctx):
            return verl_credit.CreditOutput(advantages=-batch.response_mask.float())
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        config = _config("algorithm.adv_estimator=test_from_module", "credit.import_modules=[my_credit_estimators]")
        trainer = _trainer(config)  # validate_run_config imports the module, as in verl's TaskRunner
        prompts, responses, scores, uids = _rollouts(5)
        batch = _put(local_tq, prompts, responses, scores, uids)
        trainer._compute_advantage(batch, {})
        out = _read(batch, "advantages", "response_mask")
        B = len(uids)
        torch.testing.assert_close(out["advantages"][:B], -out["response_mask"][:B].float())
    finally:
        _REGISTRY.pop("test_from_module", None)
        sys.modules.pop("my_credit_estimators", None)


def test_declared_field_the_run_lacks_is_named(local_tq):
    @register_estimator("test_needs_values", fields=("values",))
    def needs_values(batch, ctx):
        raise AssertionError("must not be reached")

    try:
        prompts, responses, scores, uids = _rollouts(6)
        batch = _put(local_tq, prompts, responses, scores, uids)
        with pytest.raises(ValueError, match="needs batch field 'values'"):
            _trainer(_config("algorithm.adv_estimator=test_needs_values"))._compute_advantage(batch, {})
    finally:
        _REGISTRY.pop("test_needs_values", None)


def test_nan_reward_in_the_queue_names_the_rollout(local_tq):
    prompts, responses, scores, uids = _rollouts(7)
    scores[5] = float("nan")
    batch = _put(local_tq, prompts, responses, scores, uids)
    with pytest.raises(
        ValueError, match=rf"^advantage step: rollout 5 of \d+ \(uid {uids[5]}, prompt .+\) has reward nan"
    ):
        _trainer(_config("algorithm.adv_estimator=ktae"))._compute_advantage(batch, {})


def test_multi_output_sessions_are_rejected():
    _check_single_output_sessions(["abc_0_0", "abc_1_0", "pad12_3_0"])
    with pytest.raises(ValueError, match="multi-output agent loop"):
        _check_single_output_sessions(["abc_0_0", "abc_0_1"])
