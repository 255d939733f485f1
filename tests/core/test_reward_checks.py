"""Run-time reward checks (issue 22, cases 1 and 2) and the reward-balanced pool's checkpoint state (case 8)."""

import json

import pytest
import torch

from verl_credit.core.reward_buffer import GroupRecord, RewardBalancedPool, fill_batch
from verl_credit.core.reward_checks import (
    bad_reward_rows,
    bad_reward_rows_loop,
    check_dropped,
    check_rewards,
    count_dropped,
)


@pytest.mark.parametrize("seed", range(6))
def test_bad_rows_vectorised_equals_loop(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(12, 7, generator=g)
    hits = torch.rand(12, 7, generator=g) < 0.08
    kinds = torch.tensor([float("nan"), float("inf"), float("-inf")])
    scores[hits] = kinds[torch.randint(3, (int(hits.sum()),), generator=g)]
    assert bad_reward_rows(scores).tolist() == bad_reward_rows_loop(scores)
    assert bad_reward_rows(scores[:, 0]).tolist() == bad_reward_rows_loop(scores[:, :1])


def test_bad_rows_dtypes():
    assert bad_reward_rows(torch.tensor([[1, 2], [3, 4]])).tolist() == []  # integers are finite
    with pytest.raises(TypeError, match="dtype torch.bool"):
        bad_reward_rows(torch.tensor([True, False]))


def test_check_rewards_names_rollout_uid_and_prompt():
    scores = torch.zeros(4, 3)
    scores[2, 2] = float("nan")
    scores[3, 1] = float("inf")
    asked = []

    def prompt_of(b):
        asked.append(b)
        return "What is 3 + 4?\n Answer with #### and a number, as in the examples given above, please."

    with pytest.raises(ValueError) as err:
        check_rewards(scores, ["a", "a", "b", "c"], "advantage step", prompt_of)
    text = str(err.value)
    assert "\n" not in text and asked == [2]
    assert text.startswith("advantage step: rollout 2 of 4 (uid b, prompt 'What is 3 + 4? Answer with")
    assert "has reward nan" in text and "2 of 4 rollouts" in text
    check_rewards(torch.ones(2, 3), ["a", "a"], "x")  # finite: no error
    with pytest.raises(ValueError, match="prompt unknown"):
        check_rewards(torch.tensor([float("-inf")]), ["u"], "x")


def test_dropped_count_and_check():
    uids = ["a"] * 4 + ["b"] * 1 + ["c"] * 2  # 3 groups present of 4 asked, n = 4
    count = count_dropped(uids, expected_groups=4, n=4)
    assert (count.expected, count.received, count.dropped) == (16, 7, 9)
    assert count.short_groups == ["b", "c"] and count.fraction == 9 / 16
    assert count.metrics() == {"rollouts_dropped/count": 9.0, "rollouts_dropped/fraction": 9 / 16}
    check_dropped(count, max_fraction=0.6)  # allowed
    with pytest.raises(ValueError) as err:
        check_dropped(count, 0.0, "the reward function raised, e.g. 'ValueError: bad'")
    text = str(err.value)
    assert "\n" not in text and "verl dropped 9 of 16 rollouts" in text and "b, c" in text
    assert "credit.max_dropped_fraction=0" in text and "ValueError: bad" in text
    full = count_dropped(["a"] * 4 + ["b"] * 4, 2, 4)
    assert full.dropped == 0 and full.short_groups == []
    check_dropped(full, 0.0)


def _pool_with_history():
    pool = RewardBalancedPool(rho=0.25, max_age=2, max_refills=1, capacity_batches=3)
    k = iter(range(100))

    def generate(prompts):
        for _ in range(prompts):
            i = next(k)
            pool.add(
                GroupRecord(uid=f"g{i}", size=4 if i % 5 else 0, positives=4 * (i % 3 == 0) if i % 5 else 0, step=step)
            )

    for step in (1, 2):
        fill_batch(pool, step, 2, generate)
    return pool, generate


def test_pool_state_round_trip_continues_exactly():
    """Save after two steps, load into a new pool (through JSON), run two more steps on both: the same
    groups are released and every counter matches."""
    pool, _ = _pool_with_history()
    assert pool.waiting, "the history must leave groups waiting"
    state = json.loads(json.dumps(pool.state_dict()))
    twin = RewardBalancedPool(rho=0.25, max_age=2, max_refills=1, capacity_batches=3)
    twin.load_state_dict(state)
    assert list(twin.waiting) == list(pool.waiting) and twin.accounted() == pool.accounted()
    for p in (pool, twin):
        k = iter(range(50, 100))
        released = []
        for step in (3, 4):

            def generate(prompts, p=p, k=k, step=step):
                for _ in range(prompts):
                    i = next(k)
                    p.add(GroupRecord(uid=f"g{i}", size=4, positives=i % 5 % 4, step=step))

            released.append(fill_batch(p, step, 2, generate).release)
        p.released_log = released
    assert twin.released_log == pool.released_log
    drop = {key: value for key, value in pool.metrics().items() if key.endswith("_total")}
    assert {key: value for key, value in twin.metrics().items() if key.endswith("_total")} == drop
    assert drop["generated/rollouts_total"] > 0


def test_pool_state_errors_name_the_entry():
    with pytest.raises(ValueError, match="missing or malformed entry 'waiting'"):
        RewardBalancedPool().load_state_dict({})
