"""The learning loop's held-out evaluation: a new sampling seed at every evaluated step, the same for
every method (paired), and the replicate evaluation of grpo and the oracle."""

import random

import pytest

from verl_credit.config import CreditConfig
from verl_credit.gym.learn import EVAL_SEED, EVAL_SEED_REPLICATE, LearnConfig, train_one
from verl_credit.gym.methods import parse_method
from verl_credit.gym.model import load_policy
from verl_credit.gym.rollout import evaluate_stats
from verl_credit.gym.task import TaskConfig, demonstration, make_problems
from verl_credit.testing import build_tiny_qwen2


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    rng = random.Random(0)
    problems = make_problems(300, seed=0)
    corpus = [p.prompt + "".join(s.text for s in demonstration(p, rng)) for p in problems]
    return build_tiny_qwen2(tmp_path_factory.mktemp("tok"), corpus, vocab_size=400)


def test_every_evaluated_step_has_its_own_paired_seed(path):
    """lr 0 keeps the warm start, so each evaluated point is evaluate_stats(warm start, EVAL_SEED + step)
    (and EVAL_SEED_REPLICATE + step for the replicate); a new seed per step gives new samples."""
    held_out = make_problems(6, seed=3)
    cfg = LearnConfig(
        steps=2, prompts_per_step=2, group_size=2, max_new_tokens=12, lr=0.0, eval_every=1, eval_samples=3
    )
    runs = {
        name: train_one(parse_method(name), 0, path, held_out, cfg, CreditConfig(), TaskConfig(), log=lambda *_: None)
        for name in ("grpo", "oracle", "ktae")
    }
    model, tokenizer = load_policy(path)
    for step in (0, 1, 2):
        stats = evaluate_stats(model, tokenizer, held_out, 3, 12, seed=EVAL_SEED + step)
        for run in runs.values():  # every method: the same seed at a step
            assert run["curve"][step] == (step, stats.accuracy)
            assert run["curve_length"][step][1] == pytest.approx(stats.length)
        replicate = evaluate_stats(model, tokenizer, held_out, 3, 12, seed=EVAL_SEED_REPLICATE + step)
        for name in ("grpo", "oracle"):
            assert runs[name]["curve_replicate"][step] == (step, replicate.accuracy)
    assert runs["ktae"]["curve_replicate"] is None
    lengths = [point[1] for point in runs["grpo"]["curve_length"]]
    assert len(set(lengths)) > 1  # the same policy, other samples at every step
