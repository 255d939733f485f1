"""The gym's ``+lr`` option: the length reward shapes the rewards as the core says, before the
estimator, with the first-seen anchor kept across steps (keyed by the prompt, not the uid); the
method syntax and ``--train-prompts`` (prompts recur in shuffled epochs)."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from verl_credit.config import CreditConfig
from verl_credit.core.length_reward import LengthRewardConfig, length_reward_shaping
from verl_credit.gym.learn import LearnConfig, train_stream
from verl_credit.gym.length_reward import GymLengthReward
from verl_credit.gym.rollout import Rollouts, credit_batch, parse_method
from verl_credit.gym.task import TaskConfig, make_problems

TOKENIZER = SimpleNamespace(pad_token_id=0, eos_token_id=1)  # the surprisal scorer reads no text
EXPLORE = 5.0 / (math.pi / 2)  # lambda_dyn before the slope schedule starts (lambda_we / (pi/2))


def _groups(*groups):
    """Rollouts of several groups: (uid, prompt ids, [(n_insig, n_sig, reward), ...]) each. A
    rollout's first n_sig tokens have surprisal 3, the next n_insig 0.05, so after min-max
    normalisation exactly n_sig tokens are significant. -> (Rollouts, old log-probs (B, T))."""
    rows = [(uid, prompt, spec) for uid, prompt, specs in groups for spec in specs]
    T = max(ni + ns for _, _, (ni, ns, _) in rows) + 2
    B = len(rows)
    responses = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    old = torch.zeros(B, T)
    for i, (_, _, (ni, ns, _)) in enumerate(rows):
        responses[i, : ni + ns] = torch.arange(5, 5 + ni + ns)
        mask[i, : ni + ns] = 1
        old[i, :ns] = -3.0
        old[i, ns : ns + ni] = -0.05
    P = max(len(p) for _, p, _ in rows)
    prompt_ids = torch.tensor([[0] * (P - len(p)) + p for _, p, _ in rows])  # left-padded
    prompt_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for _, p, _ in rows])
    rewards = torch.tensor([float(rw) for _, _, (_, _, rw) in rows])
    problems = make_problems(1, seed=0) * B
    r = Rollouts(
        prompt_ids,
        prompt_mask,
        responses,
        mask,
        rewards,
        torch.zeros(B, T, dtype=torch.long),
        [u for u, _, _ in rows],
        problems,
    )
    return r, old


PROMPT_A, PROMPT_B = [7, 8, 9], [7, 8, 10, 11]
STEP1 = (("p0", PROMPT_A, [(5, 2, 1), (5, 2, 1), (5, 2, 0), (5, 2, 0)]),)
# step 2: prompt A again under another uid, its only correct rollout twice as long in insignificant
# tokens as at first sight; prompt B is new
STEP2 = (
    ("p0", PROMPT_B, [(3, 1, 1), (3, 1, 0)]),
    ("p1", PROMPT_A, [(10, 2, 1), (5, 2, 0), (4, 2, 0), (6, 2, 0)]),
)


def _expected(r_ins, r_sig, correct, raw):
    d = length_reward_shaping(
        torch.tensor(r_ins, dtype=torch.float64),
        torch.tensor(r_sig, dtype=torch.float64),
        torch.tensor(correct),
        torch.ones(len(r_ins), dtype=torch.bool),
        lambda_c=5.0,
        lambda_wn=2.0,
        lambda_we=5.0,
        lambda_dyn=EXPLORE,
    )
    return torch.tensor(raw, dtype=torch.float64) + d


def test_first_seen_anchor_persists_across_steps_and_shapes_as_the_core_says():
    lr = GymLengthReward(CreditConfig(), "first_seen")
    r1, old1 = _groups(*STEP1)
    s1, res1, m1 = lr.apply(r1, old1, TOKENIZER, step=1)
    assert res1.n_insig.tolist() == [5] * 4 and res1.n_sig.tolist() == [2] * 4
    assert torch.allclose(s1.rewards.double(), _expected([1] * 4, [1] * 4, [True, True, False, False], [1, 1, 0, 0]))
    assert s1.rewards[0] == pytest.approx(1 + 5 * math.cos(1.0), abs=1e-6)
    assert m1["length_reward/anchor_new_prompts/count"] == 1 and len(lr.anchors) == 1

    r2, old2 = _groups(*STEP2)
    s2, res2, m2 = lr.apply(r2, old2, TOKENIZER, step=2)
    # prompt B: anchored on its own group; prompt A: on its first sight (5, 2), not on this group
    assert res2.ref_insig.tolist() == [3, 3, 5, 5, 5, 5] and res2.ref_sig.tolist() == [1, 1, 2, 2, 2, 2]
    r_ins = [1, 1, 10 / 5, 5 / 5, 4 / 5, 6 / 5]
    expected = _expected(r_ins, [1] * 6, [True, False, True, False, False, False], [1, 0, 1, 0, 0, 0])
    assert torch.allclose(s2.rewards.double(), expected, atol=1e-6)
    # the over-long correct rollout gets (almost) no bonus: r_ins = 2 is clipped at pi/2
    assert s2.rewards[2] == pytest.approx(1.0 + 5 * math.cos(math.pi / 2), abs=1e-6) and s2.rewards[2] < 1.01
    assert m2["length_reward/anchor_new_prompts/count"] == 1 and len(lr.anchors) == 2
    # the estimator reads the shaped reward on the last valid token, as verl's rm_scores
    scores = credit_batch(s2).token_level_rewards
    assert scores[2, 11] == pytest.approx(float(s2.rewards[2])) and scores[2, :11].abs().sum() == 0
    assert res2.lambda_dyn == pytest.approx(EXPLORE)
    assert lr.schedule.steps_seen == 1  # step 1 closed by step 2's value_at; step 2 is open


def test_group_anchor_moves_with_the_policy():
    lr = GymLengthReward(CreditConfig(), "group")
    assert lr.anchors is None
    lr.apply(*_groups(*STEP1), TOKENIZER, step=1)
    s2, res2, _ = lr.apply(*_groups(*STEP2), TOKENIZER, step=2)
    # prompt A's lone correct rollout is its own reference: r_ins = 1 however long it is
    assert res2.ref_insig.tolist() == [3, 3, 10, 10, 10, 10]
    assert s2.rewards[2] == pytest.approx(1 + 5 * math.cos(1.0), abs=1e-6)
    expected = _expected(
        [1, 1, 1, 0.5, 0.4, 0.6], [1] * 6, [True, False, True, False, False, False], [1, 0, 1, 0, 0, 0]
    )
    assert torch.allclose(s2.rewards.double(), expected, atol=1e-6)


def test_a_scorer_needing_the_stage_is_refused():
    config = dataclasses.replace(CreditConfig(), length_reward=LengthRewardConfig(scorer="counterfactual"))
    with pytest.raises(ValueError, match="credit.length_reward.scorer=counterfactual needs the counterfactual"):
        GymLengthReward(config, "first_seen")


def test_method_syntax():
    assert parse_method("grpo+lr").length_reward == "first_seen"
    assert parse_method("grpo+lr:group").length_reward == "group"
    m = parse_method("ktae+qp+lr:first_seen")
    assert (m.estimator, m.query_preserved, m.reward_balanced, m.length_reward) == ("ktae", True, False, "first_seen")
    assert parse_method("grpo+rb").length_reward is None
    with pytest.raises(ValueError, match="credit.length_reward.anchor must be one of first_seen, group, got 'best'"):
        parse_method("grpo+lr:best")
    with pytest.raises(ValueError, match="option '\\+lr' given twice"):
        parse_method("grpo+lr+lr:group")
    with pytest.raises(ValueError, match="unknown method option 'qp:x'"):
        parse_method("grpo+qp:x")


def test_train_prompts_recur_in_shuffled_epochs():
    task = TaskConfig()
    cfg = LearnConfig(steps=5, train_prompts=16)
    stream = train_stream(cfg, 8, seed=2, task_cfg=task)
    pool = make_problems(16, seed=10_002, config=task)
    assert len(stream) == 40
    for start in (0, 16):  # every full epoch is a permutation of the pool
        assert sorted(map(repr, stream[start : start + 16])) == sorted(map(repr, pool))
    assert stream[:16] != stream[16:32]  # a new order each epoch
    assert stream == train_stream(cfg, 8, seed=2, task_cfg=task)
    assert train_stream(LearnConfig(steps=5), 8, seed=2, task_cfg=task) == make_problems(40, seed=10_002, config=task)
    with pytest.raises(ValueError, match=r"--train-prompts must be an integer >= the prompts per step \(8\), got 4"):
        LearnConfig(train_prompts=4)
