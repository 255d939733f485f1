"""The high-entropy token filter in CreditPPOTrainer on a real TransferQueue (local Ray, CPU): after
verl's own estimators, after ours, after the length reward; one threshold over every row of the step
batch (what the dp ranks and mini-batches then train on); the start-up checks."""

import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transfer_queue as tq
from hydra import compose, initialize_config_module
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, compute_rloo_outcome_advantage
from verl.workers.utils.padding import response_to_nested

import verl_credit.main_ppo  # noqa: F401  (registers the credit schema)
from verl_credit.core.ktae import KTAEParams, ktae_advantages_loop
from verl_credit.core.token_filter import filter_advantages, high_entropy_mask_loop
from verl_credit.integration import startup
from verl_credit.integration.token_filter import ENTROPY_FIELD, KEPT_DENOMINATOR_LOSSES
from verl_credit.integration.trainer import CreditPPOTrainer, validate_run_config

PAD_ID, EOS_ID = 0, 1
PAD_ENTROPY = 99.0  # on verl's padding rows: would be kept first if they counted


def _config(*overrides):
    with initialize_config_module("verl_credit.conf", version_base=None):
        return compose("credit_trainer", overrides=["actor_rollout_ref.rollout.n=4", *overrides])


def _trainer(config, step=1):
    trainer = CreditPPOTrainer.__new__(CreditPPOTrainer)
    trainer.credit_config = validate_run_config(config)
    trainer.config = config
    trainer.tokenizer = SimpleNamespace(pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    trainer.global_steps = step
    return trainer


def _rollouts(seed, groups=3, n=4):
    """``groups`` groups of ``n`` with mixed outcomes, random responses, log-probs and entropies."""
    g = torch.Generator().manual_seed(seed)
    uids = [u for _ in range(groups) for u in [uuid.uuid4().hex] * n]
    B = len(uids)
    responses = [
        torch.randint(2, 12, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() + [EOS_ID]
        for _ in range(B)
    ]
    scores = [float(i % 2 == 0 or i % 3 == 0) for i in range(B)]
    log_probs = [(-3 * torch.rand(len(r), generator=g)).tolist() for r in responses]
    entropy = [(3 * torch.rand(len(r), generator=g)).tolist() for r in responses]
    return [[5, 6, 7]] * B, responses, scores, uids, log_probs, entropy


def _put(local_tq, prompts, responses, scores, uids, log_probs, entropy, pad_to=16):
    batch = local_tq.put_rollouts(prompts, responses, scores, uids)
    batch = local_tq.add_padding(batch, pad_to, EOS_ID)
    batch = local_tq.copy_rollout_log_probs_to_old(batch)
    nested = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])[
        "response_mask"
    ]
    width = nested.to_padded_tensor(0).shape[1]
    dense_lp = torch.zeros(len(batch), width)
    dense_h = torch.full((len(batch), width), PAD_ENTROPY)
    for i in range(len(log_probs)):
        dense_lp[i, : len(log_probs[i])] = torch.tensor(log_probs[i])
        dense_h[i, : len(entropy[i])] = torch.tensor(entropy[i])
    fields = {"old_log_probs": response_to_nested(dense_lp, nested), ENTROPY_FIELD: response_to_nested(dense_h, nested)}
    tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(fields, batch_size=len(batch)))
    return batch


def _read(batch, *fields):
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(fields))
    uids = data.get("uid").tolist() if "uid" in fields else None
    return data.select(*[f for f in fields if f != "uid"]).to_padded_tensor(), uids


def _expected(unfiltered, entropy, mask, quantile, denominator="all"):
    keep, tau = high_entropy_mask_loop(entropy, mask, quantile)
    return filter_advantages(unfiltered, keep, mask, denominator), keep, tau


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("denominator", ["all", "kept"])
def test_verls_own_estimators_then_the_filter(local_tq, estimator, denominator):
    rollouts = _rollouts(1)
    batch = _put(local_tq, *rollouts)
    metrics = {}
    config = _config(
        f"algorithm.adv_estimator={estimator}",
        "credit.token_filter.entropy_quantile=0.2",
        f"credit.token_filter.denominator={denominator}",
    )
    _trainer(config)._compute_advantage(batch, metrics)
    out, uids = _read(batch, "advantages", "returns", "rm_scores", "response_mask", ENTROPY_FIELD, "uid")
    mask, index = out["response_mask"], np.array(uids, dtype=object)
    ref_fn = compute_grpo_outcome_advantage if estimator == "grpo" else compute_rloo_outcome_advantage
    unfiltered, returns = ref_fn(out["rm_scores"], mask, index)
    expected, keep, tau = _expected(unfiltered, out[ENTROPY_FIELD], mask, 0.2, denominator)
    torch.testing.assert_close(out["advantages"], expected)
    torch.testing.assert_close(out["returns"], returns)  # returns are not filtered
    B, n_valid = len(rollouts[3]), int(mask.sum())
    assert not bool(keep[B:].any()) and (out["advantages"][B:] == 0).all()  # verl's padding rows
    assert int(keep.sum()) == int(np.ceil(0.2 * n_valid))  # distinct random entropies: exactly k
    assert metrics["credit/token_filter/kept_fraction"] == pytest.approx(int(keep.sum()) / n_valid)
    assert metrics["credit/token_filter/entropy_threshold"] == pytest.approx(float(tau))
    assert metrics["credit/token_filter/entropy_kept/mean"] > metrics["credit/token_filter/entropy_dropped/mean"]
    mass = float(unfiltered.abs()[keep].sum() / unfiltered.abs()[mask.bool()].sum())
    assert metrics["credit/token_filter/advantage_mass_kept"] == pytest.approx(mass)
    assert (out["advantages"][mask.bool() & ~keep] == 0).all() and (out["advantages"][keep] != 0).any()


def test_the_threshold_is_taken_over_every_row_of_the_step_batch(local_tq):
    """The driver filters the whole batch before verl cuts it into dp shards (contiguous chunks after
    _balance_batch) and mini-batches: with the high entropies all in the second half of the rows
    (the second of two dp ranks), the first half keeps nothing, which a per-shard threshold would not do."""
    prompts, responses, scores, uids, log_probs, entropy = _rollouts(2, groups=4)
    B = len(uids)
    entropy = [[h + (10.0 if i >= B // 2 else 0.0) for h in row] for i, row in enumerate(entropy)]
    batch = _put(local_tq, prompts, responses, scores, uids, log_probs, entropy, pad_to=B)
    metrics = {}
    _trainer(_config("algorithm.adv_estimator=grpo", "credit.token_filter.entropy_quantile=0.3"))._compute_advantage(
        batch, metrics
    )
    out, tq_uids = _read(batch, "advantages", "rm_scores", "response_mask", ENTROPY_FIELD, "uid")
    mask = out["response_mask"]
    unfiltered, _ = compute_grpo_outcome_advantage(out["rm_scores"], mask, np.array(tq_uids, dtype=object))
    expected, keep, tau = _expected(unfiltered, out[ENTROPY_FIELD], mask, 0.3)
    torch.testing.assert_close(out["advantages"], expected)
    shards = [slice(0, B // 2), slice(B // 2, B)]
    assert not bool(keep[shards[0]].any()) and bool(keep[shards[1]].any())
    assert metrics["credit/token_filter/entropy_threshold"] == pytest.approx(float(tau)) and float(tau) > 10
    # what a per-shard threshold would have kept instead: tokens of the first shard
    keep0, _ = high_entropy_mask_loop(out[ENTROPY_FIELD][shards[0]], mask[shards[0]], 0.3)
    assert bool(keep0.any())


def test_the_filter_comes_after_ktae_and_the_length_reward(local_tq):
    prompts, responses, scores, uids, log_probs, entropy = _rollouts(3)
    batch = _put(local_tq, prompts, responses, scores, uids, log_probs, entropy)
    metrics = {}
    config = _config(
        "algorithm.adv_estimator=ktae", "credit.length_reward.enabled=true", "credit.token_filter.entropy_quantile=0.5"
    )
    trainer = _trainer(config)
    trainer._compute_advantage(batch, metrics)
    out, tq_uids = _read(batch, "advantages", "rm_scores", "responses", "response_mask", ENTROPY_FIELD, "uid")
    B = len(uids)
    mask = out["response_mask"][:B].long()
    shaped = (out["rm_scores"][:B] * mask).sum(1).double()  # the length reward's shaped outcome
    assert not torch.equal(shaped, torch.tensor(scores, dtype=torch.float64))
    params = KTAEParams().with_special_ids((PAD_ID, EOS_ID))
    unfiltered, _ = ktae_advantages_loop(out["responses"][:B], mask, shaped, tq_uids[:B], params)
    expected, _, _ = _expected(unfiltered, out[ENTROPY_FIELD][:B], mask, 0.5)
    torch.testing.assert_close(out["advantages"][:B].double(), expected.double(), rtol=1e-5, atol=1e-6)
    assert "credit/length_reward/lambda_dyn/value" in metrics and "credit/ktae/key_value/abs_mean" in metrics
    assert metrics["credit/token_filter/kept_fraction"] == pytest.approx(0.5, abs=1 / int(mask.sum()))


def test_off_by_default_and_no_entropy_is_a_clear_error(local_tq):
    prompts, responses, scores, uids, log_probs, entropy = _rollouts(4)
    batch = _put(local_tq, prompts, responses, scores, uids, log_probs, entropy)
    metrics = {}
    _trainer(_config("algorithm.adv_estimator=ktae"))._compute_advantage(batch, metrics)
    assert not any(k.startswith("credit/token_filter/") for k in metrics)
    # a batch without verl's entropy (what bypass mode would give): the field is named
    fresh = {u: uuid.uuid4().hex for u in dict.fromkeys(uids)}  # new TQ keys, no entropy stored under them
    batch = local_tq.put_rollouts(prompts, responses, scores, [fresh[u] for u in uids])
    batch = local_tq.copy_rollout_log_probs_to_old(batch)
    trainer = _trainer(_config("algorithm.adv_estimator=grpo", "credit.token_filter.entropy_quantile=0.2"))
    with pytest.raises(ValueError, match="credit.token_filter needs batch field 'entropy'"):
        trainer._compute_advantage(batch, {})


# ----------------------------------------------------------------------------- start-up checks


def _plugin_checks(*overrides):
    return startup.plugin_checks(_config(*overrides), data=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["++credit.token_filter.entropy_quantile=0"], r"credit\.token_filter\.entropy_quantile .*got 0"),
        (["++credit.token_filter.entropy_quantile=1.5"], r"credit\.token_filter\.entropy_quantile .*got 1\.5"),
        (
            ["credit.token_filter.entropy_quantile=0.2", "actor_rollout_ref.actor.policy_loss.loss_mode=gspo"],
            r"loss_mode=gspo is sequence-level",
        ),
        (
            ["credit.token_filter.entropy_quantile=0.2", "actor_rollout_ref.actor.policy_loss.loss_mode=geo_mean"],
            r"loss_mode=geo_mean is sequence-level",
        ),
        (
            ["credit.token_filter.entropy_quantile=0.2", "algorithm.rollout_correction.bypass_mode=true"],
            r"entropy_quantile=0\.2 reads the entropy.*bypass_mode=true",
        ),
        (
            [
                "credit.token_filter.entropy_quantile=0.2",
                "credit.token_filter.denominator=kept",
                "actor_rollout_ref.actor.policy_loss.loss_mode=clip_cov",
            ],
            r"credit\.token_filter\.denominator=kept .*loss_mode=clip_cov",
        ),
        (
            [
                "credit.token_filter.entropy_quantile=0.2",
                "credit.token_filter.denominator=kept",
                "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
            ],
            r"credit\.token_filter\.denominator=kept .*loss_agg_mode=seq-mean-token-mean",
        ),
        (["credit.token_filter.entropy_quantile=0.2", "trainer.use_v1=false"], r"trainer\.use_v1"),
    ],
)
def test_a_filter_run_that_cannot_work_fails_before_ray(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        _plugin_checks("algorithm.adv_estimator=grpo", *overrides)
    assert "\n" not in str(err.value)


def test_a_string_quantile_is_named_at_composition_and_on_verls_config():
    with pytest.raises(Exception, match=r"credit\.token_filter\.entropy_quantile=abc"):
        _config("credit.token_filter.entropy_quantile=abc")
    # verl's own config (no schema): the credit block's own check names the key
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose(
            "ppo_trainer", overrides=["actor_rollout_ref.rollout.n=4", "+credit.token_filter.entropy_quantile=abc"]
        )
    with pytest.raises(ValueError, match=r"credit\.token_filter\.entropy_quantile .*got (str )?'abc'"):
        startup.plugin_checks(config, data=False)


@pytest.mark.parametrize("loss_mode", ["vanilla", "clip_cov", "kl_cov", "cispo"])
def test_the_filter_alone_selects_the_plugin_trainer_over_verls_grpo(loss_mode, capsys):
    config = _config(
        "trainer.v1.trainer_mode=sync",
        "algorithm.adv_estimator=grpo",
        "credit.token_filter.entropy_quantile=0.2",
        f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}",
    )
    credit = startup.plugin_checks(config, data=False)
    assert credit.token_filter.entropy_quantile == 0.2
    assert config.trainer.v1.trainer_mode == "credit"
    assert "credit.token_filter.entropy_quantile=0.2" in capsys.readouterr().err
    # verl's calculate_entropy is left as it is: V1 computes the entropy in the old-log-prob forward anyway
    assert config.actor_rollout_ref.actor.calculate_entropy is False


# ----------------------------------------------------------------------------- the denominators per loss


def _loss_grad(loss_mode, adv, old, logp, mask):
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.workers.config.actor import ActorConfig

    cfg = ActorConfig(strategy="fsdp", ppo_mini_batch_size=1, ppo_micro_batch_size_per_gpu=1, rollout_n=1)
    loss, _ = get_policy_loss_fn(loss_mode)(old, logp, adv, mask.float(), "token-mean", cfg)
    (grad,) = torch.autograd.grad(loss, logp)
    return grad


@pytest.mark.parametrize("loss_mode", KEPT_DENOMINATOR_LOSSES)
@pytest.mark.parametrize("seed", range(3))
def test_kept_is_the_mean_over_the_kept_tokens_for_the_losses_it_is_allowed_with(loss_mode, seed):
    """For every loss ``denominator=kept`` is accepted with, A * keep * N / N_kept under verl's token-mean
    loss has the gradient of the loss over the kept tokens alone; "all" has N_kept / N of it."""
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 9
    mask = (torch.arange(T)[None] < torch.randint(2, T + 1, (B,), generator=g)[:, None]).long()
    adv = torch.randn(B, T, generator=g) * mask
    entropy = torch.rand(B, T, generator=g) * 3
    old = -torch.rand(B, T, generator=g) * 2
    logp = (old + 0.3 * torch.randn(B, T, generator=g)).requires_grad_(True)  # some ratios out of the clip range
    keep, _ = high_entropy_mask_loop(entropy, mask, 0.3)
    n_valid, n_kept = int(mask.sum()), int(keep.sum())
    reference = _loss_grad(loss_mode, adv, old, logp, keep.long())  # the loss over the kept tokens only
    kept = _loss_grad(loss_mode, filter_advantages(adv, keep, mask, "kept"), old, logp, mask)
    torch.testing.assert_close(kept, reference, rtol=1e-5, atol=1e-7)
    every = _loss_grad(loss_mode, filter_advantages(adv, keep, mask, "all"), old, logp, mask)
    torch.testing.assert_close(every, reference * n_kept / n_valid, rtol=1e-5, atol=1e-7)
    assert bool((kept[mask.bool() & ~keep] == 0).all()) and bool((kept != 0).any())
