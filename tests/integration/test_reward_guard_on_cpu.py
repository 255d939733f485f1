"""Issue 22 at run time, on a real TransferQueue (local Ray) filled as verl's agent loop fills it:
the reward check of the advantage step and of the reward-balanced buffer (cases 1, 2), the rollouts
verl dropped (case 1), the buffer's groups and counters through a checkpoint (case 8); the smoke
summary of a resumed run (case 9)."""

import random
import uuid

import pytest
import transfer_queue as tq

import verl_credit.integration.trainer  # noqa: F401  (first: verl's trainer module imports the buffer through the plugin hook)
from verl_credit.cpu.smoke import step_summary
from verl_credit.integration.buffer import RewardBalancedReplayBuffer
from verl_credit.integration.buffer_state import STATE_FILE, TQ_DIR, load_buffer_state, save_buffer_state
from verl_credit.integration.reward_guard import AGENT_LOOP_ERROR, agent_loop_error, guard_rewards

EOS_ID = 1
QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]


def _put(local_tq, groups, scores, partition="train"):
    """``groups``: {uid: rollouts}; one prompt [5, 6, 7], response [8, 9, eos] per rollout."""
    uids = [u for u, k in groups.items() for _ in range(k)]
    return local_tq.put_rollouts(
        [[5, 6, 7]] * len(uids),
        [[8, 9, EOS_ID]] * len(uids),
        scores,
        uids,
        partition_id=partition,
        extra_fields={"raw_prompt": [QUESTION] * len(uids)},
    )


def _clear(batch):
    tq.kv_clear(keys=batch.keys, partition_id=batch.partition_id)


def test_nan_reward_names_rollout_uid_and_prompt(local_tq):
    part = f"g{uuid.uuid4().hex[:8]}"
    batch = _put(local_tq, {"aa": 2, "bb": 2}, [1.0, 0.0, float("nan"), 1.0], part)
    batch = local_tq.add_padding(batch, 8, EOS_ID)  # verl's pad rows are skipped, not checked
    metrics = {}
    with pytest.raises(ValueError) as err:
        guard_rewards(batch, expected_groups=2, n=2, max_dropped_fraction=0.0, metrics=metrics)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("advantage step: rollout 2 of 4 (uid bb, prompt 'Tom has 3 apples and buys 4 more.")
    assert "has reward nan" in text
    _clear(batch)


def test_dropped_rollouts_counted_and_fail_with_the_workers_error(local_tq, tmp_path):
    """Group bb lost one rollout (verl's agent loop dropped it): 1 of 4 rollouts, padded by verl."""
    part = f"g{uuid.uuid4().hex[:8]}"
    batch = local_tq.add_padding(_put(local_tq, {"aa": 2, "bb": 1}, [1.0, 0.0, 1.0], part), 4, EOS_ID)
    assert len(batch) == 4
    metrics = {}
    guard_rewards(batch, 2, 2, max_dropped_fraction=0.25, metrics=metrics)  # allowed: logged only
    assert metrics == {"credit/rollouts_dropped/count": 1.0, "credit/rollouts_dropped/fraction": 0.25}
    # the error line verl 0.9.1's agent loop writes to the worker's log, with its traceback
    # what verl 0.9.1's agent loop writes to the worker's log (shortened from a real run): the
    # reward function's error comes re-raised through Ray, the reward function's own line last
    (tmp_path / "worker-1-2.err").write_text(
        "INFO:2026-12-02 17:31:24,001:noise\n"
        f"ERROR:2026-12-02 17:31:24,567:{AGENT_LOOP_ERROR}bb\n"
        "Traceback (most recent call last):\n"
        '  File "verl/experimental/agent_loop/agent_loop.py", line 1026, in _compute_score\n'
        "    result = await selected_reward_loop_worker_handle.compute_score.remote(data)\n"
        "ray.exceptions.RayTaskError(ValueError): ray::RewardLoopWorker.compute_score() (pid=23489)\n"
        '  File "/tmp/i22/bad_reward.py", line 5, in compute_score\n'
        '    raise ValueError(f"bad reward for length {len(solution_str)}")\n'
        "ValueError: bad reward for length 41\n"
        f"ERROR:2026-12-02 17:31:25,302:{AGENT_LOOP_ERROR}cc\n"
        "ValueError: another group's error\n"
    )
    with pytest.raises(ValueError) as err:
        guard_rewards(batch, 2, 2, 0.0, {}, logs_dir=str(tmp_path))
    text = str(err.value)
    assert "\n" not in text and "verl dropped 1 of 4 rollouts" in text and "bb" in text
    assert "'ValueError: bad reward for length 41' (from the Ray workers' log)" in text
    with pytest.raises(ValueError, match=r"worker-\*\.err"):  # no log: says where to look
        guard_rewards(batch, 2, 2, 0.0, {}, logs_dir=str(tmp_path / "none"))
    _clear(batch)
    # a group restored from a checkpoint failed in an earlier session: this session's error serves
    assert agent_loop_error(["zz"], str(tmp_path)) == "ValueError: another group's error"
    assert agent_loop_error(["zz"], str(tmp_path / "none")) is None


class Rollout:
    """verl's agent loop for the buffer: prompt tags, then ``n`` finished rollouts per prompt.
    Deterministic (uids from a counter, seeded scores) so a resumed copy can replay it."""

    def __init__(self, local_tq, partition, n, pass_rate, seed=0):
        self.local_tq, self.partition, self.n, self.p = local_tq, partition, n, pass_rate
        self.rng, self.count, self.step = random.Random(seed), 0, 0
        self.nan_next = False

    def state(self):
        return self.rng.getstate(), self.count

    def restore(self, state):
        self.rng.setstate(state[0])
        self.count = state[1]

    def __call__(self, num_prompts):
        uids = [f"p{self.count + i}" for i in range(num_prompts)]
        self.count += num_prompts
        tags = [{"is_prompt": True, "status": "pending", "global_steps": self.step} for _ in uids]
        tq.kv_batch_put(keys=uids, partition_id=self.partition, tags=tags)
        scores = [float(self.rng.random() < self.p) for _ in range(num_prompts * self.n)]
        if self.nan_next:
            scores[-1] = float("nan")
        groups = dict.fromkeys(uids, self.n)
        _put(self.local_tq, groups, scores, self.partition)
        done = [{"is_prompt": True, "status": "finished", "global_steps": self.step} for _ in uids]
        tq.kv_batch_put(keys=uids, partition_id=self.partition, tags=done)
        return num_prompts


def _buffer(refill_fn):
    kwargs = {"rho": 0.25, "max_age": 2, "positive_threshold": 0.5, "max_refills": 2, "capacity_batches": 4}
    return RewardBalancedReplayBuffer(
        trainer_mode="sync",
        trainer_config={},
        max_off_policy_threshold=None,
        max_off_policy_strategy="drop",
        sampler_kwargs={**kwargs, "gen_batch_size": 2},
        poll_interval=0.01,
        refill_fn=refill_fn,
    )


def _step(buffer, rollout, step, batch_size=2):
    rollout.step = step
    rollout(batch_size)  # prepare_step
    batch, metrics = buffer.sample(global_steps=step, partition_id=rollout.partition, batch_size=batch_size)
    return batch, metrics


def _totals(metrics):
    return {k: v for k, v in metrics.items() if k.endswith("_total")}


def test_buffer_state_survives_a_restart(local_tq, tmp_path):
    """Save at step 2 with groups waiting (and step 2's batch still in TQ, as verl saves before it
    clears it), go on to step 3; then "restart": load into a new buffer and replay step 3 with the
    same generation. The same groups are released, the counters continue, the trained batch is gone."""
    rollout = Rollout(local_tq, "train", n=4, pass_rate=0.15, seed=3)
    buffer = _buffer(rollout)
    for step in (1, 2):
        batch, metrics = _step(buffer, rollout, step)
        if step == 1:
            _clear(batch)
    assert buffer.pool.waiting, "the test needs groups waiting at the save"
    saved_waiting = list(buffer.pool.waiting)
    folder = tmp_path / "global_step_2"
    save_buffer_state(buffer, str(folder), 2)
    assert (folder / STATE_FILE).exists() and (folder / TQ_DIR).is_dir()
    generation = rollout.state()
    _clear(batch)  # fit's cleanup of step 2
    batch3, metrics3 = _step(buffer, rollout, 3)
    released3 = sorted({k.split("_")[0] for k in batch3.keys})
    _clear(batch3)

    rollout.restore(generation)
    resumed = _buffer(rollout)
    assert load_buffer_state(resumed, str(folder), 2)
    assert list(resumed.pool.waiting) == saved_waiting
    items = tq.kv_list("train")["train"]
    assert {k.split("_")[0] for k in items} == set(saved_waiting)  # step 2's batch cleared
    assert {k for k, t in items.items() if t.get("is_prompt")} == set(saved_waiting)
    batch3b, metrics3b = _step(resumed, rollout, 3)
    assert sorted({k.split("_")[0] for k in batch3b.keys}) == released3
    assert set(released3) & set(saved_waiting), "a saved group must be among those released"
    assert _totals(metrics3b) == _totals(metrics3) and metrics3b["credit/buffer/generated/rollouts_total"] > 16
    _clear(batch3b)
    leftover = list(tq.kv_list("train").get("train", {}))
    if leftover:
        tq.kv_clear(keys=leftover, partition_id="train")


def test_buffer_refuses_a_nan_reward(local_tq):
    part = f"rb{uuid.uuid4().hex[:8]}"
    rollout = Rollout(local_tq, part, n=2, pass_rate=0.5)
    rollout.nan_next = True
    with pytest.raises(ValueError, match=r"^reward-balanced buffer: rollout 3 of 4 \(uid p1, prompt 'Tom has"):
        _step(_buffer(rollout), rollout, 1)
    leftover = list(tq.kv_list(part).get(part, {}))
    tq.kv_clear(keys=leftover, partition_id=part)


def test_old_checkpoint_without_buffer_state_warns(tmp_path, caplog):
    buffer = _buffer(lambda k: k)
    with caplog.at_level("WARNING", logger="verl_credit.integration.buffer_state"):
        assert not load_buffer_state(buffer, str(tmp_path), 7)
    assert "step 7" in caplog.text and "restart from 0" in caplog.text


def test_smoke_counts_steps_from_the_resumed_step():
    assert step_summary([1, 2, 3], 3, 0) == (True, "3 of 3 steps")
    assert step_summary([4, 5, 6], 6, 0) == (True, "steps 4-6 of 6 (resumed from step 3; 3 run)")
    assert step_summary([4, 5], 6, 0)[0] is False  # stopped early
    assert step_summary([1, 2, 3], 6, 0)[0] is False
    assert step_summary([1, 2], 2, 1)[0] is False  # the process failed after its steps
    assert step_summary([], 2, 0) == (False, "0 of 2 steps")
