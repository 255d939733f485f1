"""Cancellation-preserving batching against verl's real code: the V1 worker's split, verl's
``_balance_batch``, the replay buffer on a real TransferQueue (local Ray), start-up checks."""

import math
import random
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transfer_queue as tq
from hydra import compose, initialize_config_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu

import verl_credit.main_ppo  # noqa: F401  (registers the credit schema)
from verl_credit.core.batching import minibatch_rank_loads, relative_imbalance, split_groups, worker_minibatches
from verl_credit.core.token_flip import token_flip_shares
from verl_credit.integration.batching import row_uids
from verl_credit.integration.buffer import RewardBalancedReplayBuffer
from verl_credit.integration.token_flip import POST_UPDATE_FIELD
from verl_credit.integration.trainer import CreditPPOTrainer, validate_run_config

PAD_ID, EOS_ID = 0, 1


def _config(*overrides):
    with initialize_config_module("verl_credit.conf", version_base=None):
        return compose("credit_trainer", overrides=list(overrides))


# ----------------------------------------------------------------------------- verl's worker split


def verl_worker_split(num_rows, dp, mini_batch_rows, epochs, shuffle=False):
    """Global mini-batches exactly as verl forms them: KVBatchMeta.chunk over dp ranks (the
    dispatch), then each rank's tu.make_iterator (TrainingWorker.train_mini_batch)."""
    meta = KVBatchMeta(keys=[str(i) for i in range(num_rows)], tags=[{} for _ in range(num_rows)], partition_id="x")
    per_rank = []
    for rank, chunk in enumerate(meta.chunk(dp)):
        positions = torch.tensor([int(k) for k in chunk.keys])
        td = TensorDict({"pos": positions}, batch_size=len(positions))
        it = tu.make_iterator(
            td,
            mini_batch_size=mini_batch_rows // dp,
            epochs=epochs,
            seed=42 + rank,
            dataloader_kwargs={"shuffle": shuffle},
        )
        per_rank.append([mb["pos"].tolist() for mb in it])
    return [[p for rank in per_rank for p in rank[k]] for k in range(len(per_rank[0]))]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dp=st.sampled_from([1, 2, 3, 4, 8]),
    m=st.integers(1, 6),
    k=st.integers(1, 5),
    epochs=st.integers(1, 3),
)
def test_simulated_split_is_verls_split(dp, m, k, epochs):
    M = dp * m
    N = M * k
    assert worker_minibatches(N, dp, M, epochs) == verl_worker_split(N, dp, M, epochs)


def test_shuffle_breaks_the_layout():
    """Why actor.shuffle must be false: the worker's shuffle mixes rows of different mini-batches."""
    assert verl_worker_split(32, 2, 8, 1, shuffle=True) != worker_minibatches(32, 2, 8, 1)


# ----------------------------------------------------------------------------- _balance_batch, stock vs ours


def _put_groups(local_tq, rng, n_groups, n, ragged=False, max_response=40):
    uids, prompts, responses, scores = [], [], [], []
    for _ in range(n_groups):
        uid = uuid.uuid4().hex
        size = rng.randint(1, n) if ragged and rng.random() < 0.4 else n
        for _ in range(size):
            uids.append(uid)
            prompts.append([rng.randint(2, 99) for _ in range(rng.randint(3, 12))])
            responses.append([rng.randint(2, 99) for _ in range(rng.randint(1, max_response))] + [EOS_ID])
            scores.append(float(rng.random() < 0.5))
    order = list(range(len(uids)))
    rng.shuffle(order)  # the replay buffer hands over rows in TQ listing order, not by group
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    return local_tq.put_rollouts(pick(prompts), pick(responses), pick(scores), pick(uids))


def _copy(batch):
    return KVBatchMeta(keys=list(batch.keys), tags=[dict(t) for t in batch.tags], partition_id=batch.partition_id)


def _trainer(cls, config, dp):
    """A trainer without workers: what ``_balance_batch`` reads (as the foundation's tests do)."""
    trainer = cls.__new__(cls)
    if cls is CreditPPOTrainer:
        trainer.credit_config = validate_run_config(config)
    trainer.config = config
    trainer.tokenizer = SimpleNamespace(pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    trainer.actor_rollout_wg = SimpleNamespace(_dispatch_info={"actor": list(range(dp))})
    trainer.use_critic = False
    trainer.global_steps = 1
    return trainer


def _stats(batch, dp, M):
    seqlen = [t["seq_len"] for t in batch.tags]
    uids, pads = row_uids(batch.keys), [bool(t.get("is_padding", False)) for t in batch.tags]
    order = list(range(len(batch)))
    loads = minibatch_rank_loads(seqlen, order, dp, M)
    split = split_groups(uids, pads, worker_minibatches(len(batch), dp, M, 1))
    return dict(
        split=len(split),
        groups=len({u for u, p in zip(uids, pads, strict=True) if not p}),
        minibatch=float(relative_imbalance(loads).mean()),
        whole=float(relative_imbalance(loads.sum(0))),
    )


SHAPES = [  # (groups, n, dp, ppo_mini_batch_size in prompts)
    (16, 4, 4, 4),
    (32, 8, 8, 8),
    (12, 5, 5, 3),
    (24, 4, 2, 6),
    (64, 4, 8, 16),
]


@pytest.mark.parametrize("n_groups, n, dp, mini", SHAPES)
def test_query_preserved_vs_verls_balance_batch(local_tq, n_groups, n, dp, mini):
    rng = random.Random(n_groups * 7 + dp)
    batch = _put_groups(local_tq, rng, n_groups, n)
    base = [f"actor_rollout_ref.rollout.n={n}", f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}"]
    M = n * mini

    stock_metrics, ours_metrics = {}, {}
    stock = _trainer(PPOTrainerSync, _config(*base), dp)._balance_batch(_copy(batch), stock_metrics)
    ours = _trainer(CreditPPOTrainer, _config(*base, "credit.batching.query_preserved=true"), dp)._balance_batch(
        _copy(batch), ours_metrics
    )
    s, o = _stats(stock, dp, M), _stats(ours, dp, M)
    print(
        f"\n[balance] groups={n_groups} n={n} dp={dp} M={M}: stock splits {s['split']}/{s['groups']} groups, "
        f"minibatch imbalance {s['minibatch']:.3f}, whole {s['whole']:.4f}; "
        f"ours splits {o['split']}, minibatch {o['minibatch']:.3f}, whole {o['whole']:.4f}"
    )
    assert s["split"] > 0  # verl's own order puts rollouts of one prompt into different optimizer steps
    assert o["split"] == 0
    assert sorted(ours.keys) == sorted(stock.keys)  # the same rows (same padding), none lost or doubled
    assert o["minibatch"] <= s["minibatch"] + 1e-9  # balanced inside each mini-batch, unlike stock
    assert o["whole"] <= max(2 * s["whole"], 0.02)  # and over the whole batch close to verl's optimum
    assert ours_metrics["credit/batching/extra_padding/rows"] == 0
    assert ours_metrics["credit/batching/rank_imbalance/mean"] == pytest.approx(o["minibatch"])
    for key in ("global_seqlen/balanced_min", "global_seqlen/balanced_max", "global_seqlen/mean"):
        assert key in ours_metrics and key in stock_metrics
    assert ours_metrics["global_seqlen/mean"] == pytest.approx(stock_metrics["global_seqlen/mean"])


def test_option_off_is_verls_balance_batch(local_tq):
    batch = _put_groups(local_tq, random.Random(5), 8, 4)
    config = _config("actor_rollout_ref.rollout.n=4", "actor_rollout_ref.actor.ppo_mini_batch_size=2")
    stock = _trainer(PPOTrainerSync, config, 4)._balance_batch(_copy(batch), {})
    ours = _trainer(CreditPPOTrainer, config, 4)._balance_batch(_copy(batch), {})
    assert ours.keys == stock.keys


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_short_groups_stay_whole_with_extra_padding(local_tq, seed):
    rng = random.Random(100 + seed)
    batch = _put_groups(local_tq, rng, 10, 4, ragged=True)
    config = _config(
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "credit.batching.query_preserved=true",
    )
    metrics = {}
    out = _trainer(CreditPPOTrainer, config, 2)._balance_batch(_copy(batch), metrics)
    M = 8
    assert len(out) % M == 0 and _stats(out, 2, M)["split"] == 0
    real = [k for k, t in zip(out.keys, out.tags, strict=True) if not t.get("is_padding", False)]
    assert sorted(real) == sorted(batch.keys)
    assert metrics["credit/batching/extra_padding/rows"] == len(out) - (len(batch) + (-len(batch)) % M)
    # every row, padding included, exists in TransferQueue with the fields training reads
    data = tq.kv_batch_get(keys=out.keys, partition_id=out.partition_id, select_fields=["input_ids", "response_mask"])
    assert data.batch_size[0] == len(out)


# ----------------------------------------------------------------------------- start-up checks


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["credit.batching.query_preserved=true", "actor_rollout_ref.actor.shuffle=true"], "shuffle=false"),
        (["credit.batching.query_preserved=true", "trainer.v1.trainer_mode=sync"], "trainer_mode=credit"),
        (["credit.batching.reward_balanced.enabled=true", "trainer.use_v1=false"], "use_v1=true"),
        (["credit.diagnostics.token_flip_every=5", "trainer.v1.trainer_mode=sync"], "token_flip_every"),
        (
            [
                "credit.batching.reward_balanced.enabled=true",
                "trainer.v1.sampler.custom_sampler.path=pkg://x",
                "trainer.v1.sampler.custom_sampler.name=Y",
            ],
            "custom_sampler is already set",
        ),
        (
            ["credit.batching.reward_balanced.enabled=true", "algorithm.filter_groups.enable=true"],
            "algorithm.filter_groups.enable",
        ),
        (
            [
                "credit.batching.reward_balanced.enabled=true",
                "reward.reward_model.enable=true",
                "reward.reward_model.enable_resource_pool=false",
            ],
            "rewards at sampling time",
        ),
        (["credit.batching.reward_balanced.rho=0.7"], r"credit\.batching\.reward_balanced\.rho must lie in"),
    ],
)
def test_start_up_checks(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_run_config(_config("actor_rollout_ref.rollout.n=4", *overrides))


def test_options_pass_the_checks():
    credit = validate_run_config(
        _config(
            "actor_rollout_ref.rollout.n=4",
            "credit.batching.query_preserved=true",
            "credit.batching.reward_balanced.enabled=true",
            "credit.diagnostics.token_flip_every=10",
        )
    )
    assert credit.batching.query_preserved and credit.batching.reward_balanced.enabled


# ----------------------------------------------------------------------------- reward-balanced buffer on TQ


class FakeRollout:
    """Stands in for verl's agent loop: registers prompts (tag-only, as the sync trainer does) and
    puts their finished rollouts, each correct with probability ``pass_rate``."""

    def __init__(self, local_tq, partition, n, pass_rate, seed):
        self.local_tq, self.partition, self.n, self.p = local_tq, partition, n, pass_rate
        self.rng = random.Random(seed)
        self.step = 0
        self.submitted: list[str] = []

    def __call__(self, num_prompts):
        uids = [uuid.uuid4().hex for _ in range(num_prompts)]
        self.submitted.extend(uids)
        rows = [u for u in uids for _ in range(self.n)]
        scores = [float(self.rng.random() < self.p) for _ in rows]
        tags = [{"is_prompt": True, "status": "pending", "global_steps": self.step} for _ in uids]
        tq.kv_batch_put(keys=uids, partition_id=self.partition, tags=tags)
        self.local_tq.put_rollouts(
            [[5, 6, 7]] * len(rows),
            [[8, 9, EOS_ID]] * len(rows),
            scores,
            rows,
            partition_id=self.partition,
            global_steps=self.step,
        )
        done = [{"is_prompt": True, "status": "finished", "global_steps": self.step} for _ in uids]
        tq.kv_batch_put(keys=uids, partition_id=self.partition, tags=done)
        return num_prompts


def _buffer(refill_fn, **options):
    kwargs = {
        "rho": 0.25,
        "max_age": 1,
        "positive_threshold": 0.5,
        "max_refills": 2,
        "capacity_batches": 4,
        "gen_batch_size": 2,
        **options,
    }
    return RewardBalancedReplayBuffer(
        trainer_mode="sync",
        trainer_config={},
        max_off_policy_threshold=None,
        max_off_policy_strategy="drop",
        sampler_kwargs=kwargs,
        poll_interval=0.01,
        refill_fn=refill_fn,
    )


def _listed(partition):
    items = (tq.kv_list(partition) or {}).get(partition, {})
    return {k for k, t in items.items() if t.get("is_prompt")}, {k for k, t in items.items() if not t.get("is_prompt")}


@pytest.mark.parametrize("pass_rate", [0.5, 0.1, 1.0])
def test_buffer_on_transfer_queue(local_tq, pass_rate):
    partition = f"rb{uuid.uuid4().hex[:8]}"
    n, batch_size = 4, 4
    rollout = FakeRollout(local_tq, partition, n, pass_rate, seed=int(pass_rate * 10))
    buffer = _buffer(rollout)
    trained: set[str] = set()
    for step in range(1, 5):
        rollout.step = step
        rollout(batch_size)  # prepare_step
        batch, metrics = buffer.sample(global_steps=step, partition_id=partition, batch_size=batch_size)
        uids = set(row_uids(batch.keys))
        assert len(uids) == batch_size and len(batch) == batch_size * n and not uids & trained
        trained |= uids
        data = tq.kv_batch_get(keys=batch.keys, partition_id=partition, select_fields=["rm_scores"])
        positive = float(np.mean([float(v.sum()) > 0.5 for v in data["rm_scores"]]))
        assert metrics["credit/buffer/released_positive/share"] == pytest.approx(positive)
        if metrics["credit/buffer/forced_release/count"] == 0:
            assert 0.25 <= positive <= 0.75
        else:
            assert pass_rate == 1.0 or pass_rate == 0.1
        assert metrics["credit/buffer/released_age/max"] <= 1
        # TQ holds exactly the waiting groups (prompt keys) plus this step's batch rows
        prompts, rows = _listed(partition)
        assert prompts == set(buffer.pool.waiting)
        assert rows == set(batch.keys) | {k for k in rows if k.split("_")[0] in buffer.pool.waiting}
        generated, accounted = buffer.pool.accounted()
        assert generated == accounted == metrics["credit/buffer/generated/rollouts_total"]
        tq.kv_clear(keys=batch.keys, partition_id=partition)  # what fit() does at the end of a step
    dropped = {u for u in rollout.submitted if u not in trained and u not in buffer.pool.waiting}
    assert sum(c["groups"] for c in buffer.pool.dropped.values()) == len(dropped)
    if pass_rate == 1.0:
        assert metrics["credit/buffer/forced_release/total"] == 4  # never balances, never deadlocks
        # it asked for more: 2 refills at step 1, then 1 a step (capacity 4 batches, 2 of them waiting)
        assert len(rollout.submitted) == 4 * batch_size + (2 + 1 + 1 + 1) * batch_size
        assert metrics["credit/buffer/dropped_age/rollouts_total"] > 0
    leftover = list(set.union(*_listed(partition)))
    assert {k.split("_")[0] for k in leftover} == set(buffer.pool.waiting)  # dropped groups left TQ
    if leftover:
        tq.kv_clear(keys=leftover, partition_id=partition)


def test_validation_passes_straight_through(local_tq):
    partition = "val"
    rollout = FakeRollout(local_tq, partition, 2, 1.0, seed=0)
    rollout(3)
    buffer = _buffer(lambda k: pytest.fail("validation must not refill"))
    batch, _ = buffer.sample(global_steps=1, partition_id=partition, batch_size=3)
    assert set(row_uids(batch.keys)) == set(rollout.submitted) and len(batch) == 6
    assert buffer.pool.generated["groups"] == 0
    tq.kv_clear(keys=batch.keys, partition_id=partition)


def test_buffer_options_are_validated():
    with pytest.raises(ValueError, match=r"credit\.batching\.reward_balanced\.rho"):
        _buffer(lambda k: k, rho=0.9)
    with pytest.raises(ValueError, match="gen_batch_size"):
        _buffer(lambda k: k, gen_batch_size=None)
    with pytest.raises(ValueError, match="valid keys"):
        _buffer(lambda k: k, rhoo=0.2)


def test_trainer_installs_the_buffer_through_verls_hook():
    config = _config(
        "actor_rollout_ref.rollout.n=4",
        "data.train_batch_size=8",
        "credit.batching.reward_balanced.enabled=true",
        "credit.correct_threshold=0.5",
    )
    trainer = _trainer(CreditPPOTrainer, config, 1)
    trainer.trainer_mode = "sync"
    buffer = trainer._build_replay_buffer()  # verl's own method, after the mixin set the hook
    assert type(buffer) is RewardBalancedReplayBuffer
    assert config.trainer.v1.sampler.custom_sampler.path == "pkg://verl_credit.integration.buffer"
    assert buffer.positive_threshold == 0.5 and buffer.gen_batch_size == 8 and buffer.settings.rho == 0.25
    stock = _trainer(CreditPPOTrainer, _config("actor_rollout_ref.rollout.n=4"), 1)
    stock.trainer_mode = "sync"
    assert type(stock._build_replay_buffer()).__name__ == "ReplayBuffer"


def test_resume_from_a_checkpoint_without_buffer_state_warns(tmp_path, caplog):
    folder = tmp_path / "global_step_7"
    folder.mkdir()
    config = _config(
        "actor_rollout_ref.rollout.n=4",
        "credit.batching.reward_balanced.enabled=true",
        "trainer.resume_mode=resume_path",
        f"trainer.resume_from_path={folder}",
    )
    trainer = _trainer(CreditPPOTrainer, config, 1)
    trainer.trainer_mode = "sync"
    trainer.actor_rollout_wg = SimpleNamespace(load_checkpoint=lambda **kwargs: None)
    trainer.replay_buffer = trainer._build_replay_buffer()
    with caplog.at_level("WARNING", logger="verl_credit.integration.buffer_state"):
        trainer._load_checkpoint()  # verl's own resume (actor stubbed), then the mixin's restore
    assert trainer.global_steps == 7
    assert "without buffer state" in caplog.text and "step 7" in caplog.text


# ----------------------------------------------------------------------------- token flip plumbing


class StandInActorGroup:
    """Replaces the actor worker group (its GPU engine cannot run here): ``update_actor`` returns
    metrics like verl's; ``compute_log_prob`` writes ``log_probs`` over prompt + response into TQ,
    as the worker does, shifted by ``delta`` from the stored old log-probs."""

    def __init__(self, delta):
        self.delta = delta  # (B, T) padded, per response token
        self.calls = []

    def update_actor(self, batch):
        self.calls.append("update_actor")
        return {"metrics": {"mfu": 0.0, "pg_loss": [0.1]}}

    def compute_log_prob(self, batch):
        self.calls.append(("compute_log_prob", dict(batch.extra_info)))
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["old_log_probs", "prompts"]
        )
        rows = []
        for i, (old, prompt) in enumerate(zip(list(data["old_log_probs"]), list(data["prompts"]), strict=True)):
            full = torch.full((len(prompt) + len(old),), -50.0)
            # the worker's log_probs are left-shifted: response token t sits at prompt_len - 1 + t
            full[len(prompt) - 1 : len(prompt) - 1 + len(old)] = old + self.delta[i, : len(old)]
            rows.append(full)
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict(
                {"log_probs": torch.nested.as_nested_tensor(rows, layout=torch.jagged)}, batch_size=len(rows)
            ),
        )
        return batch


def test_token_flip_after_update(local_tq):
    rng = random.Random(3)
    uids = [u for u in (uuid.uuid4().hex for _ in range(3)) for _ in range(4)]
    responses = [[rng.randint(2, 99) for _ in range(rng.randint(2, 9))] + [EOS_ID] for _ in uids]
    scores = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    batch = local_tq.put_rollouts([[5, 6, 7, 8]] * len(uids), responses, scores, uids)
    local_tq.copy_rollout_log_probs_to_old(batch)
    config = _config(
        "actor_rollout_ref.rollout.n=4", "algorithm.adv_estimator=grpo", "credit.diagnostics.token_flip_every=2"
    )
    trainer = _trainer(CreditPPOTrainer, config, 1)
    trainer._compute_advantage(batch, {})  # verl's grpo writes `advantages`
    T = max(len(r) for r in responses)
    delta = torch.randn(len(uids), T, generator=torch.Generator().manual_seed(0))
    trainer.actor_rollout_wg = StandInActorGroup(delta)

    trainer.global_steps = 1  # not a diagnostic step
    metrics = {}
    trainer._update_actor(batch, metrics)
    assert trainer.actor_rollout_wg.calls == ["update_actor"] and "actor/pg_loss" in metrics
    assert not any(k.startswith("credit/token_flip") for k in metrics)

    trainer.global_steps = 2
    metrics = {}
    extra_before = dict(batch.extra_info)
    trainer._update_actor(batch, metrics)
    call = trainer.actor_rollout_wg.calls[-1]
    assert call[0] == "compute_log_prob" and call[1]["compute_loss"] is False
    assert batch.extra_info == extra_before  # the diagnostic leaves verl's batch options as it found them

    data = tq.kv_batch_get(
        keys=batch.keys,
        partition_id=batch.partition_id,
        select_fields=["old_log_probs", "advantages", "response_mask", POST_UPDATE_FIELD],
    )
    padded = {
        k: data[k].to_padded_tensor(0.0) for k in ("old_log_probs", "advantages", "response_mask", POST_UPDATE_FIELD)
    }
    mask = padded["response_mask"]
    torch.testing.assert_close(padded[POST_UPDATE_FIELD] * mask, (padded["old_log_probs"] + delta) * mask)
    expected = token_flip_shares(padded["old_log_probs"], padded["old_log_probs"] + delta, padded["advantages"], mask)
    assert metrics["credit/token_flip/positive_share"] == pytest.approx(expected["positive/share"])
    assert metrics["credit/token_flip/negative_share"] == pytest.approx(expected["negative/share"])
    sign = torch.sign((padded["advantages"] * mask).sum(-1))
    assert metrics["credit/token_flip/positive_tokens"] == mask[sign > 0].sum().item() > 0
    assert not math.isnan(metrics["credit/token_flip/negative_share"])
