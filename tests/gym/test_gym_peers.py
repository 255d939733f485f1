"""The gym's peers and compositions: the method grammar, the entropy filter after any estimator, +m1,
verl's rloo / optimal_token_baseline / clip_cov / kl_cov, the old-forward statistics, and the fields a
user estimator declares (item 6 of issue 20: ``prompts`` reaches it as the trainer passes it)."""

import random

import numpy as np
import pytest
import torch

import verl_credit
from verl_credit.config import CreditConfig
from verl_credit.core.groups import group_outcome_advantage
from verl_credit.gym.compose import apply_mean1, mean1_factor, mean1_factor_loop, policy_loss
from verl_credit.gym.methods import parse_method
from verl_credit.gym.model import response_logprobs, response_stats
from verl_credit.gym.rollout import Rollouts, estimate
from verl_credit.gym.task import Problem, demonstration, make_problems
from verl_credit.testing import build_tiny_qwen2, load_tiny

P = Problem(start=7, ops=("+", "*", "-"), operands=(3, 2, 4))
SEEN: dict = {}


@verl_credit.register_estimator("gym_test_needs_prompts", fields=("prompts", "rollout_log_probs", "ref_log_prob"))
def gym_test_needs_prompts(batch, ctx):
    """GRPO, recording the declared fields it was given."""
    SEEN.update({k: batch.fields[k].clone() for k in ("prompts", "rollout_log_probs", "ref_log_prob")})
    SEEN["old_log_probs"] = batch.old_log_probs
    z = group_outcome_advantage(batch.scores, batch.groups, ctx.norm_adv_by_std, ctx.config.epsilon)
    return verl_credit.CreditOutput(advantages=z[:, None] * batch.response_mask)


@verl_credit.register_estimator("gym_test_needs_values", fields=("values",))
def gym_test_needs_values(batch, ctx):
    raise AssertionError("never called")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    rng = random.Random(0)
    problems = make_problems(300, seed=0)
    corpus = [p.prompt + "".join(s.text for s in demonstration(p, rng)) for p in problems]
    path = build_tiny_qwen2(tmp_path_factory.mktemp("tok"), corpus, vocab_size=400)
    model, tokenizer = load_tiny(path)
    tokenizer.padding_side = "left"
    return model, tokenizer


TEXTS = [
    ("7+3=10\n10*2=20\n20-4=16\n#### 16", 1.0),
    ("7+3=10\nlet me think about it\n10*2=21\n21-4=17\n#### 17", 0.0),
    ("7+3=10\n10*2=20\n20-4=16\n#### 15", 0.0),
    ("7+3=10\n10*2=20\nnote 4+5=9\n20-4=16\n#### 16", 1.0),
]


def _rollouts(tokenizer, texts=TEXTS, groups=2):
    """Hand-written rollouts: ``groups`` groups of the same problem, 4 texts each (mixed rewards)."""
    rows = texts * groups
    enc = tokenizer([P.prompt] * len(rows), return_tensors="pt", padding=True, add_special_tokens=False)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t, _ in rows]
    T = max(len(r) for r in ids)
    responses = torch.full((len(rows), T), tokenizer.pad_token_id)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(ids):
        responses[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    rewards = torch.tensor([reward for _, reward in rows])
    uids = [f"p{k // len(texts)}" for k in range(len(rows))]
    labels = torch.zeros_like(responses)
    return Rollouts(enc["input_ids"], enc["attention_mask"], responses, mask, rewards, labels, uids, [P] * len(rows))


def test_method_grammar():
    m = parse_method("entropy80")
    assert (m.estimator, m.entropy_quantile, m.entropy_denominator) == ("grpo", 0.2, "all")
    m = parse_method("counterfactual:random+entropy80:0.3:kept+m1+qp")
    assert (m.estimator, m.cf_mode, m.entropy_quantile, m.entropy_denominator, m.mean1, m.query_preserved) == (
        "counterfactual",
        "random",
        0.3,
        "kept",
        True,
        True,
    )
    assert parse_method("entropy80:0.1").entropy_quantile == 0.1
    assert (parse_method("clip_cov").estimator, parse_method("clip_cov").loss_mode) == ("grpo", "clip_cov")
    assert parse_method("kl_cov:0.01").loss_ratio == 0.01 and parse_method("kl_cov").loss_ratio is None
    assert parse_method("ktae+clip_cov:0.05").loss_mode == "clip_cov"
    assert (
        parse_method("rloo").estimator == "rloo" and parse_method("optimal_token_baseline+entropy80").entropy_quantile
    )
    assert parse_method("oracle:mask+m1").mean1 and parse_method("entropy80+m1").mean1
    assert parse_method("counterfactual+qp+entropy80:0.3+clip_cov+lr").credit_label == "counterfactual+entropy80:0.3"
    assert parse_method("clip_cov:0.01+rb").credit_label == "grpo"


@pytest.mark.parametrize(
    "text, message",
    [
        ("grpo+m1", "+m1 rescales token weights to mean 1 per rollout and grpo has none"),
        ("ktae+m1", "ktae has none (not a token weighting)"),
        ("rloo+m1", "rloo has none"),
        ("entropy80+entropy80", "option '+entropy80' given twice"),
        ("clip_cov+kl_cov", "one policy loss per method: clip_cov and +kl_cov"),
        ("grpo+clip_cov+kl_cov", "one policy loss per method: +clip_cov and +kl_cov"),
        ("entropy80:2", "entropy80 quantile must lie in (0, 1], got 2"),
        ("entropy80:0.2:most", "entropy80 denominator must be one of all, kept, got 'most'"),
        ("grpo+entropy80:x", "entropy80 quantile must be a number, got 'x'"),
        ("clip_cov:0", "clip_cov ratio must lie in (0, 1], got 0"),
        ("grpo+m1:x", "+m1 takes no argument"),
        ("rloo:x", "a ':mode' suffix is only for counterfactual, oracle"),
        ("gym_test_needs_values", "declares field 'values' (a critic's values), which the gym cannot pass"),
        ("oracle+lr", "oracle reads each rollout's correctness from its 0/1 reward; +lr reshapes it"),
    ],
)
def test_method_errors_name_the_part(text, message):
    with pytest.raises(ValueError) as err:
        parse_method(text)
    assert str(err.value).startswith(f"gym --estimators {text!r}: ") and message in str(err.value)


def test_a_user_estimator_gets_the_fields_the_trainer_passes(policy):
    """Issue 20 item 6: the declared prompts (left-padded ids, as verl's ``prompts``), rollout_log_probs
    and ref_log_prob reach the estimator; old_log_probs sits on the batch as in the trainer."""
    model, tokenizer = policy
    r = _rollouts(tokenizer)
    old = torch.randn(r.responses.shape) * r.response_mask
    ref = torch.randn(r.responses.shape) * r.response_mask
    SEEN.clear()
    out = estimate(parse_method("gym_test_needs_prompts"), r, model, tokenizer, CreditConfig(), 0, old, None, ref)
    assert torch.equal(SEEN["prompts"], r.prompt_ids)
    assert torch.equal(SEEN["rollout_log_probs"], old) and torch.equal(SEEN["old_log_probs"], old)
    assert torch.equal(SEEN["ref_log_prob"], ref)
    assert out.advantages.abs().sum() > 0
    with pytest.raises(ValueError, match="declares field 'ref_log_prob' and none was computed"):
        estimate(parse_method("gym_test_needs_prompts"), r, model, tokenizer, CreditConfig(), 0, old)


def test_response_stats_match_a_loop_over_the_vocabulary(policy):
    model, tokenizer = policy
    r = _rollouts(tokenizer)
    with torch.no_grad():
        s = response_stats(model, r.prompt_ids, r.prompt_mask, r.responses, r.response_mask)
        logp = response_logprobs(model, r.prompt_ids, r.prompt_mask, r.responses, r.response_mask)
        torch.testing.assert_close(s.log_probs, logp)
        i = 1  # one row by hand: the unpadded prompt + response through the model
        n = int(r.response_mask[i].sum())
        ids = torch.cat([r.valid("prompt", i), r.valid("response", i)])[None]
        logits = model(input_ids=ids).logits[0].double()
        P = int(r.prompt_mask[i].sum())
        for t in range(n):
            p = torch.softmax(logits[P - 1 + t], -1)
            assert float(s.entropy[i, t]) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-4)
            assert float(s.sum_pi_squared[i, t]) == pytest.approx(float((p * p).sum()), abs=1e-5)
    assert bool((s.entropy[r.response_mask == 0] == 0).all())


def test_entropy_filter_follows_any_estimator(policy):
    model, tokenizer = policy
    r = _rollouts(tokenizer)
    mask = r.response_mask
    with torch.no_grad():
        stats = response_stats(model, r.prompt_ids, r.prompt_mask, r.responses, mask)
    cfg = CreditConfig()
    grpo = estimate(parse_method("grpo"), r, model, tokenizer, cfg, stats=stats).advantages
    filt = estimate(parse_method("entropy80:0.3"), r, model, tokenizer, cfg, stats=stats)
    valid = stats.entropy[mask.bool()]
    k = int(np.ceil(0.3 * valid.numel()))
    tau = valid.sort(descending=True).values[k - 1]
    keep = mask.bool() & (stats.entropy >= tau)
    torch.testing.assert_close(filt.advantages, grpo * keep)
    torch.testing.assert_close(filt.token_weights, keep.float())
    # after an oracle: its weights times the kept mask; +m1 then rescales that product to mean 1
    oracle = estimate(parse_method("oracle"), r, model, tokenizer, cfg, stats=stats)
    both = estimate(parse_method("oracle+entropy80:0.3"), r, model, tokenizer, cfg, stats=stats)
    torch.testing.assert_close(both.advantages, oracle.advantages * keep)
    m1 = estimate(parse_method("oracle+entropy80:0.3+m1"), r, model, tokenizer, cfg, stats=stats)
    for i in range(mask.shape[0]):
        w = m1.token_weights[i][mask[i].bool()]
        if bool((both.token_weights[i] > 0).any()):
            assert float(w.mean()) == pytest.approx(1.0, abs=1e-5)
    # "kept": the step's kept tokens carry N / N_kept
    kept = estimate(parse_method("entropy80:0.3:kept"), r, model, tokenizer, cfg, stats=stats)
    torch.testing.assert_close(kept.advantages, grpo * keep * (mask.sum() / keep.sum()))


@pytest.mark.parametrize("seed", range(4))
def test_mean1_factor_matches_the_loop(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(5, 7, generator=g) * (torch.rand(5, 7, generator=g) > 0.3)
    mask = torch.arange(7)[None] < torch.randint(1, 8, (5, 1), generator=g)
    w[0] = 0  # a row without weight
    torch.testing.assert_close(mean1_factor(w, mask), mean1_factor_loop(w, mask))


def test_mean1_rescales_weights_and_keeps_the_rollout_factor():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    w = torch.tensor([[2.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    z = torch.tensor([[0.8], [-0.8]])
    out = apply_mean1(verl_credit.CreditOutput(advantages=z * w * mask, token_weights=w), mask, "x")
    torch.testing.assert_close(out.token_weights[0], torch.tensor([2.0, 0.5, 0.5, 0.0]) / 1.0)
    torch.testing.assert_close(out.advantages[0], 0.8 * torch.tensor([2.0, 0.5, 0.5, 0.0]))
    assert bool((out.advantages[1] == 0).all())
    with pytest.raises(ValueError, match="'x': \\+m1 needs token weights and the estimator returned none"):
        apply_mean1(verl_credit.CreditOutput(advantages=z * mask), mask, "x")


def test_rloo_is_the_leave_one_out_baseline(policy):
    model, tokenizer = policy
    r = _rollouts(tokenizer)
    out = estimate(parse_method("rloo"), r, model, tokenizer, CreditConfig())
    rewards = r.rewards.view(2, 4)
    loo = (rewards.sum(1, keepdim=True) - rewards) / 3
    expected = (rewards - loo).flatten()[:, None] * r.response_mask
    torch.testing.assert_close(out.advantages, expected.float())


def test_optimal_token_baseline_matches_its_formula(policy):
    """OTB: w_t = 1 - 2 pi_t + sum pi^2, W_t = cumsum w, B_t = sum_i G_it W_it / sum_i W_it per group, A = G - B
    (equal lengths: the zero-tail rule does not apply)."""
    model, tokenizer = policy
    texts = [("7+3=10\n#### 16", 1.0), ("7+3=11\n#### 16", 0.0), ("7+3=12\n#### 16", 0.0), ("7+3=13\n#### 16", 0.0)]
    r = _rollouts(tokenizer, texts, groups=1)
    assert len(set(r.response_mask.sum(1).tolist())) == 1
    with torch.no_grad():
        stats = response_stats(model, r.prompt_ids, r.prompt_mask, r.responses, r.response_mask)
    out = estimate(parse_method("optimal_token_baseline"), r, model, tokenizer, CreditConfig(), stats=stats)
    m = r.response_mask.double()
    w = (1 - 2 * stats.log_probs.double().exp() + stats.sum_pi_squared.double()) * m
    W = w.cumsum(1)
    G = r.rewards.double()[:, None] * m  # outcome on the last token: the return-to-go is the reward everywhere
    B = (G * W * m).sum(0) / ((W * m).sum(0) + 1e-8)
    torch.testing.assert_close(out.advantages, ((G - B) * m).float(), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out.advantages[0], out.advantages[0, :1].expand_as(out.advantages[0]))


def test_clip_cov_and_kl_cov_are_verls_losses_with_the_methods_ratio():
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    kwargs = dict(strategy="fsdp", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=32, rollout_n=8, clip_ratio=0.2)
    fn, cfg = policy_loss(parse_method("grpo"), kwargs)
    assert fn is get_policy_loss_fn("vanilla")
    fn, cfg = policy_loss(parse_method("clip_cov"), kwargs)
    assert fn is get_policy_loss_fn("clip_cov") and cfg.policy_loss.clip_cov_ratio == 0.0002
    assert (cfg.policy_loss.clip_cov_lb, cfg.policy_loss.clip_cov_ub) == (1.0, 5.0)
    fn, cfg = policy_loss(parse_method("kl_cov:1"), kwargs)
    assert fn is get_policy_loss_fn("kl_cov") and cfg.policy_loss.kl_cov_ratio == 1.0
    # ratio 1: every token gets the |log ratio| penalty: loss = token-mean(-A r + coef |log r|)
    g = torch.Generator().manual_seed(0)
    old, new = torch.randn(4, 6, generator=g) - 2, torch.randn(4, 6, generator=g) - 2
    adv, mask = torch.randn(4, 6, generator=g), torch.ones(4, 6)
    loss, _ = fn(old, new, adv, mask, "token-mean", cfg)
    coef = cfg.policy_loss.ppo_kl_coef
    expected = (-adv * (new - old).exp() + coef * (new - old).abs()).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
