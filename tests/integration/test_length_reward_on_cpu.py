"""The length reward in CreditPPOTrainer on a real TransferQueue (local Ray, CPU): estimators see it."""

import json
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transfer_queue as tq
from hydra import compose, initialize_config_module
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.workers.utils.padding import response_to_nested

import verl_credit.main_ppo  # noqa: F401  (registers the credit schema)
from verl_credit.core.groups import group_index_from_uids
from verl_credit.core.ktae import KTAEParams, ktae_advantages
from verl_credit.core.length_reward import (
    DynamicLambdaSchedule,
    LengthRewardConfig,
    PromptAnchors,
    compute_length_reward,
    prompt_keys,
)
from verl_credit.integration.length_reward import ANCHOR_FILE, STATE_FILE, LengthRewardMixin
from verl_credit.integration.trainer import CreditPPOTrainer, validate_run_config

PAD_ID, EOS_ID = 0, 1
EXPLORE = 3.183098861837907


def _config(*overrides):
    with initialize_config_module("verl_credit.conf", version_base=None):
        return compose("credit_trainer", overrides=["actor_rollout_ref.rollout.n=4", *overrides])


def _trainer(config, step=1):
    """The trainer as verl builds it, minus the workers: what ``__init__`` sets that the step reads."""
    trainer = CreditPPOTrainer.__new__(CreditPPOTrainer)
    trainer.credit_config = validate_run_config(config)
    trainer.config = config
    trainer.tokenizer = SimpleNamespace(pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    trainer.global_steps = step
    return trainer


def _rollouts(seed):
    """Two groups of 4: a mixed one and an all-correct one (GRPO alone gives the latter A = 0),
    plus an empty response in the mixed group; random old log-probs."""
    g = torch.Generator().manual_seed(seed)
    uids = [uuid.uuid4().hex] * 4 + [uuid.uuid4().hex] * 4
    prompts = [[5, 6, 7]] * 8
    responses = []
    for i in range(8):
        length = 0 if i == 3 else int(torch.randint(2, 10, (1,), generator=g))
        responses.append(torch.randint(2, 30, (length,), generator=g).tolist() + ([EOS_ID] if length else []))
    scores = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    log_probs = [(-3 * torch.rand(len(r), generator=g)).tolist() for r in responses]
    return prompts, responses, scores, uids, log_probs


def _put(local_tq, prompts, responses, scores, uids, log_probs, pad_to=16):
    batch = local_tq.put_rollouts(prompts, responses, scores, uids)
    batch = local_tq.add_padding(batch, pad_to, EOS_ID)
    batch = local_tq.copy_rollout_log_probs_to_old(batch)
    # old log-probs as the actor would recompute them (put_rollouts stores zeros)
    mask = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
    nested = mask["response_mask"]
    dense = torch.zeros(len(batch), nested.to_padded_tensor(0).shape[1])
    for i, row in enumerate(log_probs):
        dense[i, : len(row)] = torch.tensor(row)
    fields = TensorDict({"old_log_probs": response_to_nested(dense, nested)}, batch_size=len(batch))
    tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
    return batch


def _read(batch, *fields):
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(fields))
    uids = data.get("uid").tolist() if "uid" in fields else None
    padded = data.select(*[f for f in fields if f != "uid"]).to_padded_tensor()
    return padded, uids


def _expected_shaping(prompts, responses, scores, uids, log_probs, width, lambda_dyn=EXPLORE, anchors=None):
    """The core computation on the same rollouts (surprisal scorer, first-seen anchors keyed by the
    prompt ids in ``anchors``, a fresh store by default), padding rows left out."""
    B = len(uids)
    mask = torch.zeros(B, width, dtype=torch.long)
    logp = torch.zeros(B, width, dtype=torch.float64)
    rm = torch.zeros(B, width)
    for i, r in enumerate(responses):
        mask[i, : len(r)] = 1
        logp[i, : len(r)] = torch.tensor(log_probs[i], dtype=torch.float64)
        if r:
            rm[i, len(r) - 1] = scores[i]
    keys = prompt_keys([torch.tensor(p) for p in prompts])
    anchors = PromptAnchors() if anchors is None else anchors
    return compute_length_reward(
        -logp,
        rm,
        mask,
        group_index_from_uids(uids),
        LengthRewardConfig(),
        lambda_dyn,
        anchors=anchors,
        prompt_keys=keys,
    )


def test_stock_grpo_sees_the_shaped_reward(local_tq):
    prompts, responses, scores, uids, log_probs = _rollouts(0)
    batch = _put(local_tq, prompts, responses, scores, uids, log_probs)
    metrics = {}
    trainer = _trainer(_config("algorithm.adv_estimator=grpo", "credit.length_reward.enabled=true"))
    trainer._compute_advantage(batch, metrics)

    out, tq_uids = _read(batch, "advantages", "rm_scores", "credit_raw_rm_scores", "response_mask", "uid")
    B, T = len(uids), out["rm_scores"].shape[1]
    expected = _expected_shaping(prompts, responses, scores, uids, log_probs, T)
    torch.testing.assert_close(out["rm_scores"][:B], expected.shaped_rm_scores, rtol=1e-6, atol=1e-6)
    assert (out["rm_scores"][B:] == 0).all()  # verl's padding rows untouched
    raw = out["credit_raw_rm_scores"][:B].sum(-1)
    assert raw.tolist() == [s if r else 0.0 for s, r in zip(scores, responses, strict=True)]
    # verl's own grpo ran on the shaped reward: the all-correct group now has non-zero advantages
    ref, _ = compute_grpo_outcome_advantage(out["rm_scores"], out["response_mask"], np.array(tq_uids, dtype=object))
    torch.testing.assert_close(out["advantages"], ref)
    assert out["advantages"][4:8].abs().sum() > 0
    assert expected.shaping[3] == 0 and out["rm_scores"][3].abs().sum() == 0  # the empty response
    assert metrics["credit/length_reward/lambda_dyn/value"] == pytest.approx(EXPLORE)
    assert (
        metrics["credit/length_reward/shaping_correct/mean"]
        > 0
        > metrics["credit/length_reward/shaping_incorrect/mean"]
    )
    assert metrics["credit/length_reward/empty_responses/count"] == 1.0
    assert trainer.credit_length_reward_last.insignificant.shape == (16, T)
    assert trainer._length_reward_schedule().open_step == 1
    # both groups share the prompt [5, 6, 7]: the first group seen anchors it for both
    assert metrics["credit/length_reward/anchor_new_prompts/count"] == 1.0
    assert metrics["credit/length_reward/anchor_prompts/count"] == 1.0
    assert metrics["credit/length_reward/anchor_evictions/count"] == 0.0


def test_first_seen_anchors_persist_across_steps(local_tq):
    """Step 2 sees the prompts of step 1 under new uids: the anchors of step 1 are used, not the group's."""
    prompts, responses, scores, uids, log_probs = _rollouts(4)
    prompts = [[5, 6, 7]] * 4 + [[8, 9]] * 4
    trainer = _trainer(_config("algorithm.adv_estimator=grpo", "credit.length_reward.enabled=true"))
    first = {}
    trainer._compute_advantage(_put(local_tq, prompts, responses, scores, uids, log_probs), first)
    anchored = trainer.credit_length_reward_last
    assert first["credit/length_reward/anchor_new_prompts/count"] == 2.0

    _, responses2, _, _, log_probs2 = _rollouts(5)
    uids2 = [uuid.uuid4().hex] * 4 + [uuid.uuid4().hex] * 4
    scores2 = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # one correct rollout per group
    second = {}
    trainer.global_steps = 2
    batch = _put(local_tq, prompts, responses2, scores2, uids2, log_probs2)
    trainer._compute_advantage(batch, second)
    res = trainer.credit_length_reward_last
    assert second["credit/length_reward/anchor_new_prompts/count"] == 0.0
    assert second["credit/length_reward/anchor_prompts/count"] == 2.0
    torch.testing.assert_close(res.ref_insig[:8], anchored.ref_insig[:8])  # step 1's counts, per prompt
    for row in (0, 5):  # the only correct rollout of its group: r_ins against the anchor, not 1
        assert res.r_ins[row].item() == pytest.approx(res.n_insig[row].item() / anchored.ref_insig[row].item())
    out, _ = _read(batch, "rm_scores")
    T = out["rm_scores"].shape[1]
    store = PromptAnchors()
    _expected_shaping(prompts, responses, scores, uids, log_probs, T, anchors=store)
    expected = _expected_shaping(prompts, responses2, scores2, uids2, log_probs2, T, anchors=store)
    torch.testing.assert_close(out["rm_scores"][:8], expected.shaped_rm_scores, rtol=1e-6, atol=1e-6)


def test_ktae_sees_the_shaped_reward(local_tq):
    prompts, responses, scores, uids, log_probs = _rollouts(1)
    batch = _put(local_tq, prompts, responses, scores, uids, log_probs)
    config = _config("algorithm.adv_estimator=ktae", "credit.length_reward.enabled=true")
    _trainer(config)._compute_advantage(batch, {})

    out, _ = _read(batch, "advantages", "rm_scores", "response_mask", "responses")
    B = len(uids)
    shaped = out["rm_scores"][:B].double().sum(-1)
    expected = ktae_advantages(
        out["responses"][:B],
        out["response_mask"][:B],
        shaped,
        group_index_from_uids(uids),
        KTAEParams(ignore_token_ids=[PAD_ID, EOS_ID]),
    ).advantages
    torch.testing.assert_close(out["advantages"][:B], expected, rtol=1e-5, atol=1e-5)
    unshaped = ktae_advantages(
        out["responses"][:B],
        out["response_mask"][:B],
        torch.tensor(scores, dtype=torch.float64) * (out["response_mask"][:B].sum(-1) > 0),
        group_index_from_uids(uids),
        KTAEParams(ignore_token_ids=[PAD_ID, EOS_ID]),
    ).advantages
    assert not torch.allclose(out["advantages"][:B], unshaped)


def test_ktae_scorer_and_disabled_option(local_tq):
    prompts, responses, scores, uids, log_probs = _rollouts(2)
    batch = _put(local_tq, prompts, responses, scores, uids, log_probs)
    metrics = {}
    config = _config(
        "algorithm.adv_estimator=grpo", "credit.length_reward.enabled=true", "credit.length_reward.scorer=ktae"
    )
    _trainer(config)._compute_advantage(batch, metrics)
    assert "credit/length_reward/insignificant_tokens/mean" in metrics
    out, _ = _read(batch, "rm_scores", "credit_raw_rm_scores")
    assert not torch.equal(out["rm_scores"], out["credit_raw_rm_scores"])

    batch = _put(local_tq, prompts, responses, scores, uids, log_probs)
    metrics = {}
    _trainer(_config("algorithm.adv_estimator=grpo"))._compute_advantage(batch, metrics)
    out, _ = _read(batch, "rm_scores")
    assert out["rm_scores"][: len(uids)].sum(-1).tolist() == [
        s if r else 0 for s, r in zip(scores, responses, strict=True)
    ]
    assert not any(k.startswith("credit/length_reward") for k in metrics)


def test_user_scorer_needing_an_absent_field_is_named(local_tq, tmp_path, monkeypatch):
    (tmp_path / "needs_values_scorer.py").write_text(
        "def score(inputs):\n    raise AssertionError('must not be reached')\nscore.fields = ('values',)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts, responses, scores, uids, log_probs = _rollouts(3)
    batch = _put(local_tq, prompts, responses, scores, uids, log_probs)
    config = _config(
        "algorithm.adv_estimator=grpo",
        "credit.length_reward.enabled=true",
        "credit.length_reward.scorer=needs_values_scorer:score",
    )
    with pytest.raises(ValueError, match="needs batch field 'values'"):
        _trainer(config)._compute_advantage(batch, {})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["actor_rollout_ref.rollout.n=1"], "rollout.n must be >= 2"),
        (["trainer.v1.trainer_mode=sync"], "trainer_mode=credit"),
        (["credit.length_reward.scorer=no_such_pkg_xyz.mod:fn"], "cannot import module 'no_such_pkg_xyz.mod'"),
    ],
)
def test_start_up_checks(overrides, message):
    config = _config("algorithm.adv_estimator=grpo", "credit.length_reward.enabled=true", *overrides)
    with pytest.raises(ValueError, match=message):
        validate_run_config(config)
    validate_run_config(_config("algorithm.adv_estimator=grpo", *overrides[:0]))  # off: nothing checked


class _FakeVerlCheckpoints:
    """Stands in for verl's _save_checkpoint / _load_checkpoint (which need the workers)."""

    def _save_checkpoint(self):
        self.saved = True

    def _load_checkpoint(self):
        self.global_steps = self.resume_step


class _Trainer(LengthRewardMixin, _FakeVerlCheckpoints):
    pass


def test_schedule_state_is_saved_with_the_checkpoint_and_restored(tmp_path, caplog):
    cfg = LengthRewardConfig(enabled=True, slope_start_step=3, slope_period=2)
    config = _config(f"trainer.default_local_dir={tmp_path}")
    first = _Trainer()
    first.credit_config, first.config, first.global_steps = SimpleNamespace(length_reward=cfg), config, 5
    schedule = first._length_reward_schedule()
    for step, y in enumerate([0.1, 0.2, 0.3, 0.3, 0.3], start=1):
        schedule.value_at(step)
        schedule.observe(step, y, 1)
    first._save_checkpoint()
    path = tmp_path / "global_step_5" / STATE_FILE
    assert first.saved and json.loads(path.read_text())["open_step"] == 5

    resumed = _Trainer()
    resumed.credit_config, resumed.config, resumed.resume_step = SimpleNamespace(length_reward=cfg), config, 5
    resumed._load_checkpoint()
    reference = DynamicLambdaSchedule(cfg)
    reference.load_state_dict(schedule.state_dict())
    assert resumed._length_reward_schedule().state_dict() == schedule.state_dict()
    assert resumed._length_reward_schedule().value_at(6) == reference.value_at(6) == -1.0  # two flat steps

    path.unlink()
    fresh = _Trainer()
    fresh.credit_config, fresh.config, fresh.resume_step = SimpleNamespace(length_reward=cfg), config, 5
    with caplog.at_level("WARNING"):
        fresh._load_checkpoint()
    assert "lambda_dyn restarts" in caplog.text and fresh._length_reward_schedule().value_at(6) == EXPLORE


def test_anchors_are_saved_with_the_checkpoint_and_restored(tmp_path, caplog):
    cfg = LengthRewardConfig(enabled=True)
    config = _config(f"trainer.default_local_dir={tmp_path}")
    first = _Trainer()
    first.credit_config, first.config, first.global_steps = SimpleNamespace(length_reward=cfg), config, 7
    anchors = first._length_reward_anchors()
    usable = torch.ones(3, dtype=torch.bool)
    anchors.resolve(["p", "q", "r"], torch.tensor([4.0, 1.5, 7.0]), torch.tensor([2.0, 3.0, 1.0]), usable)
    first._save_checkpoint()
    path = tmp_path / "global_step_7" / ANCHOR_FILE
    assert json.loads(path.read_text())["entries"][0] == ["p", 4.0, 2.0]

    resumed = _Trainer()
    resumed.credit_config, resumed.config, resumed.resume_step = SimpleNamespace(length_reward=cfg), config, 7
    resumed._load_checkpoint()
    assert resumed._length_reward_anchors().entries == anchors.entries
    ins, sig, new = resumed._length_reward_anchors().resolve(
        ["q"], torch.tensor([99.0]), torch.tensor([99.0]), torch.ones(1, dtype=torch.bool)
    )
    assert (ins.item(), sig.item(), bool(new)) == (1.5, 3.0, False)  # the saved anchor, not this step's counts

    path.unlink()
    fresh = _Trainer()
    fresh.credit_config, fresh.config, fresh.resume_step = SimpleNamespace(length_reward=cfg), config, 7
    with caplog.at_level("WARNING"):
        fresh._load_checkpoint()
    assert "every prompt is anchored again" in caplog.text and len(fresh._length_reward_anchors()) == 0

    group = _Trainer()  # anchor=group keeps no anchors and writes no file
    group_cfg = LengthRewardConfig(enabled=True, anchor="group")
    group.credit_config, group.config, group.global_steps = SimpleNamespace(length_reward=group_cfg), config, 8
    group._save_checkpoint()
    assert (tmp_path / "global_step_8" / STATE_FILE).exists() and not (
        tmp_path / "global_step_8" / ANCHOR_FILE
    ).exists()
