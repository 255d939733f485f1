"""verl_credit.core.batching: query-preserved layout, reward-balanced pool, token-flip metric."""

import itertools
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from verl_credit.core.batching import (
    BatchingConfig,
    DiagnosticsConfig,
    RewardBalancedConfig,
    group_rows,
    minibatch_rank_loads,
    pack_groups,
    query_preserved_layout,
    relative_imbalance,
    required_padding,
    split_groups,
    worker_minibatches,
)
from verl_credit.core.reward_buffer import GroupRecord, RewardBalancedPool, fill_batch, select_balanced_groups
from verl_credit.core.token_flip import token_flip_shares, token_flip_shares_loop

# ----------------------------------------------------------------------------- helpers


def lpt_balance(workloads, k):
    """Test-local equal-size balancing (longest first to the lightest open part)."""
    size = len(workloads) // k
    parts, loads = [[] for _ in range(k)], [0.0] * k
    for i in sorted(range(len(workloads)), key=lambda i: -workloads[i]):
        j = min((j for j in range(k) if len(parts[j]) < size), key=lambda j: loads[j])
        parts[j].append(i)
        loads[j] += workloads[i]
    return parts


def contiguous_balance(workloads, k):
    """No balancing at all: the layout's invariants must not depend on balance quality."""
    size = len(workloads) // k
    return [list(range(j * size, (j + 1) * size)) for j in range(k)]


def make_batch(rng, n_groups, n, dp, mb_prompts, ragged, max_len=4096):
    """Rows as verl's replay buffer hands them over (groups interleaved), then verl's padding."""
    sizes = [rng.randint(1, n) if ragged and rng.random() < 0.3 else n for _ in range(n_groups)]
    uids = [f"u{g}" for g, s in enumerate(sizes) for _ in range(s)]
    rng.shuffle(uids)
    M = mb_prompts * n
    pad = (-len(uids)) % math.lcm(dp, M)  # upsample_batch_to_divisible_size
    is_padding = [False] * len(uids) + [True] * pad
    uids = uids + ["padabc"] * pad
    lengths = [rng.randint(1, max_len) for _ in uids]
    return uids, is_padding, lengths, M


def layout_with_padding(uids, is_padding, lengths, M, dp, balance):
    groups, free = group_rows(uids, is_padding)
    extra = required_padding([len(g) for g in groups], len(free), M, math.lcm(dp, M))
    uids = uids + ["padxyz"] * extra
    is_padding = is_padding + [True] * extra
    lengths = lengths + [128] * extra
    return uids, is_padding, lengths, query_preserved_layout(uids, is_padding, lengths, M, dp, balance), extra


def check_layout(uids, is_padding, layout, M, dp, epochs):
    N = len(uids)
    assert sorted(layout.order) == list(range(N))  # no row lost or duplicated
    moved_uids = [uids[i] for i in layout.order]
    moved_pad = [is_padding[i] for i in layout.order]
    minibatches = worker_minibatches(N, dp, M, epochs)
    K = N // M
    assert len(minibatches) == epochs * K
    for e in range(epochs):  # per epoch: no group in two optimizer steps, every row exactly once
        epoch = minibatches[e * K : (e + 1) * K]
        assert split_groups(moved_uids, moved_pad, epoch) == {}
        assert sorted(p for mb in epoch for p in mb) == list(range(N))


# ----------------------------------------------------------------------------- query-preserved layout


@st.composite
def batch_shapes(draw):
    n = draw(st.integers(1, 8))
    mb_prompts = draw(st.integers(1, 6))
    M = n * mb_prompts
    dp = draw(st.sampled_from([d for d in range(1, 9) if M % d == 0]))  # verl's worker asserts M % dp == 0
    return dict(
        n_groups=draw(st.integers(1, 40)),
        n=n,
        dp=dp,
        mb_prompts=mb_prompts,
        epochs=draw(st.integers(1, 3)),
        ragged=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
        max_len=draw(st.sampled_from([8, 512, 8192])),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=batch_shapes(), balanced=st.booleans())
def test_layout_never_splits_a_group(shape, balanced):
    rng = random.Random(shape["seed"])
    uids, is_padding, lengths, M = make_batch(
        rng, shape["n_groups"], shape["n"], shape["dp"], shape["mb_prompts"], shape["ragged"], shape["max_len"]
    )
    balance = lpt_balance if balanced else contiguous_balance
    uids, is_padding, lengths, layout, extra = layout_with_padding(uids, is_padding, lengths, M, shape["dp"], balance)
    check_layout(uids, is_padding, layout, M, shape["dp"], shape["epochs"])
    if not shape["ragged"]:
        assert extra == 0  # equal groups: verl's own padding is enough
    # rank_rows/minibatches describe the same order
    assert [i for r in layout.rank_rows for i in r] == layout.order
    assert all(len(mb) == M for mb in layout.minibatches)


@pytest.mark.parametrize(
    "n_groups, n, dp, mb_prompts, epochs",
    [(64, 8, 8, 16, 1), (32, 16, 4, 8, 2), (5, 4, 2, 2, 3), (128, 4, 8, 32, 1), (7, 3, 3, 7, 2), (1, 5, 5, 1, 1)],
)
def test_layout_on_typical_shapes(n_groups, n, dp, mb_prompts, epochs):
    rng = random.Random(n_groups * 31 + n)
    uids, is_padding, lengths, M = make_batch(rng, n_groups, n, dp, mb_prompts, ragged=False)
    uids, is_padding, lengths, layout, extra = layout_with_padding(uids, is_padding, lengths, M, dp, lpt_balance)
    assert extra == 0
    check_layout(uids, is_padding, layout, M, dp, epochs)


def test_stock_like_order_splits_groups():
    """The test can fail: rows sorted by length across ranks (what balancing does) split groups."""
    rng = random.Random(0)
    uids, is_padding, lengths, M = make_batch(rng, 16, 4, 4, 4, ragged=False)
    order = sorted(range(len(uids)), key=lambda i: lengths[i])
    split = split_groups([uids[i] for i in order], [is_padding[i] for i in order], worker_minibatches(len(uids), 4, M))
    assert len(split) > 0


def test_ragged_groups_get_extra_padding_and_stay_whole():
    # M = 8 rows; groups of 5, 5, 5, 1: 16 rows fit 2 mini-batches by count but not by groups
    uids = ["a"] * 5 + ["b"] * 5 + ["c"] * 5 + ["d"]
    is_padding = [False] * 16
    assert required_padding([5, 5, 5, 1], 0, 8, 8) == 8
    uids, is_padding, lengths, layout, extra = layout_with_padding(uids, is_padding, [10] * 16, 8, 2, lpt_balance)
    assert extra == 8 and len(layout.order) == 24
    check_layout(uids, is_padding, layout, 8, 2, 2)


def test_pack_groups_first_fit_decreasing():
    assert pack_groups([4, 4, 4, 4], 2, 8) == [[0, 1], [2, 3]]  # equal sizes keep their order
    assert pack_groups([3, 5, 2, 6], 2, 8) == [[3, 2], [1, 0]]
    assert pack_groups([5, 5, 5], 2, 8) is None


def test_required_padding_rejects_a_group_larger_than_a_minibatch():
    with pytest.raises(ValueError, match="ppo_mini_batch_size"):
        required_padding([9], 0, 8, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_rows=12, M=8, dp=2), "not a multiple of the mini-batch"),
        (dict(n_rows=16, M=8, dp=3), "cannot be split evenly"),
    ],
)
def test_layout_rejects_bad_shapes(kwargs, match):
    N = kwargs["n_rows"]
    with pytest.raises(ValueError, match=match):
        query_preserved_layout(["a"] * N, [False] * N, [1] * N, kwargs["M"], kwargs["dp"], lpt_balance)


def test_layout_rejects_unequal_balance_parts():
    def bad(workloads, k):
        return [list(range(len(workloads) - 1)), [len(workloads) - 1]] + [[] for _ in range(k - 2)]

    with pytest.raises(ValueError, match="parts of"):
        query_preserved_layout(["a"] * 8, [False] * 8, [1] * 8, 8, 2, bad)


def test_layout_balances_ranks_inside_each_minibatch():
    """Per mini-batch imbalance of the query-preserved layout stays small on realistic lengths."""
    rng = random.Random(1)
    uids, is_padding, lengths, M = make_batch(rng, 64, 8, 8, 16, ragged=False, max_len=8192)
    uids, is_padding, lengths, layout, _ = layout_with_padding(uids, is_padding, lengths, M, 8, lpt_balance)
    ours = relative_imbalance(minibatch_rank_loads(lengths, layout.order, 8, M)).mean()
    unbalanced = query_preserved_layout(uids, is_padding, lengths, M, 8, contiguous_balance)
    base = relative_imbalance(minibatch_rank_loads(lengths, unbalanced.order, 8, M)).mean()
    assert ours < 0.05 < base


def test_minibatch_rank_loads_by_hand():
    # N=8, dp=2, M=4 -> m=2; rank 0 gets positions 0..3, rank 1 positions 4..7
    values = [1, 2, 3, 4, 10, 20, 30, 40]
    loads = minibatch_rank_loads(values, list(range(8)), 2, 4)
    np.testing.assert_array_equal(loads, [[3, 30], [7, 70]])
    np.testing.assert_allclose(relative_imbalance(loads), [27 / 16.5, 63 / 38.5])


def test_worker_minibatches_by_hand():
    assert worker_minibatches(8, 2, 4, epochs=2) == [[0, 1, 4, 5], [2, 3, 6, 7]] * 2
    with pytest.raises(ValueError, match="multiple of the dp size"):
        worker_minibatches(8, 3, 4)
    with pytest.raises(ValueError, match="do not cut"):
        worker_minibatches(12, 2, 8)


# ----------------------------------------------------------------------------- balanced selection


def window(rho, S):
    return math.ceil(rho * S - 1e-9), math.floor((1 - rho) * S + 1e-9)


@settings(max_examples=400, deadline=None)
@given(
    positives=st.lists(st.integers(0, 6), min_size=1, max_size=9),
    n=st.integers(1, 6),
    batch=st.integers(1, 9),
    rho=st.sampled_from([0.05, 0.1, 0.2, 0.25, 1 / 3, 0.4, 0.5]),
    ages=st.lists(st.integers(0, 3), min_size=9, max_size=9),
)
def test_selection_matches_brute_force_on_equal_groups(positives, n, batch, rho, ages):
    positives = [min(p, n) for p in positives]
    G = len(positives)
    assume(batch <= G)
    chosen, share, ok = select_balanced_groups(positives, [n] * G, ages[:G], batch, rho)
    assert len(chosen) == batch == len(set(chosen.tolist()))
    P = sum(positives[i] for i in chosen)
    assert share == pytest.approx(P / (batch * n))
    L, U = window(rho, batch * n)
    assert ok == (L <= P <= U)  # the flag tells the truth
    exists = any(L <= sum(c) <= U for c in itertools.combinations(positives, batch))
    if U - L >= n - 1:  # the documented completeness condition
        assert ok == exists
    else:
        assert not ok or exists


def test_selection_prefers_old_groups():
    # the two oldest groups are balanced together: they are chosen, nothing else
    chosen, share, ok = select_balanced_groups([4, 0, 2, 2], [4] * 4, [1, 1, 0, 0], 2, 0.25)
    assert ok and sorted(chosen.tolist()) == [0, 1] and share == 0.5
    # all-correct oldest pair: one is swapped for the oldest helpful group, the youngest-worst goes
    chosen, share, ok = select_balanced_groups([4, 4, 0, 1], [4] * 4, [2, 1, 0, 0], 2, 0.25)
    assert ok and sorted(chosen.tolist()) == [0, 2] and share == 0.5


def test_selection_with_ragged_groups_reports_honestly():
    rng = np.random.default_rng(0)
    for _ in range(200):
        G = int(rng.integers(2, 12))
        sizes = rng.integers(1, 9, G)
        positives = rng.integers(0, sizes + 1)
        B = int(rng.integers(1, G + 1))
        chosen, share, ok = select_balanced_groups(positives, sizes, rng.integers(0, 3, G), B, 0.25)
        P, S = positives[chosen].sum(), sizes[chosen].sum()
        assert share == pytest.approx(P / S) and ok == (0.25 * S - 1e-9 <= P <= 0.75 * S + 1e-9)


def test_selection_rejects_bad_input():
    with pytest.raises(ValueError, match="cannot select"):
        select_balanced_groups([1], [2], [0], 2, 0.25)
    with pytest.raises(ValueError, match="positives <= size"):
        select_balanced_groups([3], [2], [0], 1, 0.25)


# ----------------------------------------------------------------------------- reward-balanced pool


class Stream:
    """Synthetic generation: groups of n rollouts, each positive with probability ``pass_rate``;
    with ``fail_rate`` a rollout is lost (short or empty groups, as failed rollouts in verl)."""

    def __init__(self, pool, n, pass_rate, seed, fail_rate=0.0):
        self.pool, self.n, self.p, self.fail = pool, n, pass_rate, fail_rate
        self.rng = random.Random(seed)
        self.count = 0
        self.removed: dict[str, str] = {}
        self.records: dict[str, GroupRecord] = {}

    def generate(self, k, step):
        for _ in range(k):
            size = sum(self.rng.random() >= self.fail for _ in range(self.n))
            pos = sum(self.rng.random() < self.p for _ in range(size))
            record = GroupRecord(uid=f"g{self.count}", size=size, positives=pos, step=step)
            self.count += 1
            self.records[record.uid] = record
            self.on_drop(self.pool.add(record))

    def on_drop(self, drop):
        assert not set(drop) & set(self.removed), "a group dropped twice"
        self.removed.update(drop)


def run_steps(pool, stream, steps, batch_size, check=None):
    released: set[str] = set()
    reasons: list[str] = []
    decide = pool.decide

    def recording_decide(*args, **kwargs):
        decision = decide(*args, **kwargs)
        reasons.append(decision.reason)
        return decision

    pool.decide = recording_decide
    for step in range(1, steps + 1):
        stream.generate(batch_size, step)  # what prepare_step submits each step
        calls = []
        reasons.clear()

        def generate(k, step=step, calls=calls):
            calls.append(k)
            stream.generate(k, step)

        decision = fill_batch(pool, step, batch_size, generate, stream.on_drop)
        records = [stream.records[u] for u in decision.release]
        assert len(decision.release) == batch_size == len(set(decision.release))
        assert not set(decision.release) & released and not set(decision.release) & set(stream.removed)
        released |= set(decision.release)
        assert all(step - r.step <= pool.max_age for r in records)
        P, S = sum(r.positives for r in records), sum(r.size for r in records)
        assert decision.positive_share == pytest.approx(P / S)
        if decision.reason == "balanced":
            assert pool.rho * S - 1e-9 <= P <= (1 - pool.rho) * S + 1e-9
        else:
            assert decision.reason == "forced"
        # bounded wait: at most max_refills balance refills, shortfall rounds only after failed rollouts
        assert reasons.count("unbalanced") <= pool.max_refills and reasons.count("shortfall") <= 8
        assert len(calls) == len(reasons) - 1 and reasons[-1] in ("balanced", "forced")
        if stream.fail == 0:
            assert reasons.count("shortfall") == 0
        generated, accounted = pool.accounted()
        assert generated == accounted
        assert len(pool.waiting) <= (pool.capacity_batches - 1) * batch_size
        metrics = pool.metrics()
        assert metrics["forced_release/count"] == int(decision.reason == "forced")
        assert metrics["released/groups"] == batch_size
        if check:
            check(step, decision, calls)
    # every generated group is trained on, waiting, or dropped with a reason
    assert set(stream.records) == released | set(pool.waiting) | set(stream.removed)
    assert not released & set(pool.waiting)
    return released


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pass_rate=st.sampled_from([0.0, 0.02, 0.1, 0.5, 0.9, 1.0]),
    n=st.integers(1, 8),
    batch_size=st.integers(1, 8),
    rho=st.sampled_from([0.1, 0.25, 0.5]),
    max_age=st.integers(0, 3),
    max_refills=st.integers(0, 3),
    capacity=st.integers(1, 5),
    fail_rate=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 10_000),
)
def test_pool_invariants_on_random_streams(
    pass_rate, n, batch_size, rho, max_age, max_refills, capacity, fail_rate, seed
):
    pool = RewardBalancedPool(rho=rho, max_age=max_age, max_refills=max_refills, capacity_batches=capacity)
    run_steps(pool, Stream(pool, n, pass_rate, seed, fail_rate), steps=8, batch_size=batch_size)


@pytest.mark.parametrize("pass_rate", [0.0, 1.0])
def test_streams_that_never_balance_do_not_deadlock(pass_rate):
    """All-correct / all-wrong: every step releases after exactly max_refills extra batches, forced."""
    pool = RewardBalancedPool(rho=0.25, max_age=2, max_refills=2, capacity_batches=20)

    def check(step, decision, calls):
        assert decision.reason == "forced" and calls == [4, 4]
        assert decision.positive_share == pass_rate

    run_steps(pool, Stream(pool, 4, pass_rate, 0), steps=6, batch_size=4, check=check)
    assert pool.forced_releases == 6
    assert pool.dropped["age"]["groups"] > 0  # what could not be used ages out, with its reason


def test_capacity_bounds_refills():
    pool = RewardBalancedPool(rho=0.25, max_age=5, max_refills=10, capacity_batches=2)
    seen = []
    run_steps(pool, Stream(pool, 4, 1.0, 0), 4, 4, check=lambda s, d, calls: seen.append(calls))
    assert all(len(calls) <= 1 for calls in seen)  # room for one extra batch only


def test_balanced_stream_uses_every_group():
    pool = RewardBalancedPool(rho=0.25, max_age=2)
    stream = Stream(pool, 8, 0.5, 3)
    run_steps(pool, stream, steps=10, batch_size=8)
    m = pool.metrics()
    assert m["utilisation/share"] == 1.0 and m["forced_release/total"] == 0 and m["waiting/groups"] == 0


def test_rare_positives_are_waited_for_and_kept():
    """pass rate 0.1, n = 4: the buffer holds groups back and mixes old positives with new ones."""
    pool = RewardBalancedPool(rho=0.25, max_age=2, max_refills=2)
    run_steps(pool, Stream(pool, 4, 0.1, 7), steps=20, batch_size=4)
    m = pool.metrics()
    assert m["trained/rollouts_total"] == 20 * 16
    assert m["dropped_age/rollouts_total"] + m["dropped_capacity/rollouts_total"] > 0
    assert pool.forced_releases < 20


def test_pool_rejects_duplicates_and_bad_counts():
    pool = RewardBalancedPool()
    pool.add(GroupRecord("a", 4, 2, 1))
    with pytest.raises(ValueError, match="already added"):
        pool.add(GroupRecord("a", 4, 2, 1))
    with pytest.raises(ValueError, match="positives 5"):
        pool.add(GroupRecord("b", 4, 5, 1))
    assert pool.add(GroupRecord("c", 0, 0, 1)) == {"c": "empty"}


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "cls, kwargs, key",
    [
        (RewardBalancedConfig, dict(rho=0.0), "credit.batching.reward_balanced.rho must lie in (0, 0.5]"),
        (RewardBalancedConfig, dict(rho=0.51), "credit.batching.reward_balanced.rho"),
        (RewardBalancedConfig, dict(max_age=-1), "credit.batching.reward_balanced.max_age"),
        (RewardBalancedConfig, dict(max_refills=1.5), "credit.batching.reward_balanced.max_refills"),
        (RewardBalancedConfig, dict(capacity_batches=0), "credit.batching.reward_balanced.capacity_batches"),
        (RewardBalancedConfig, dict(positive_threshold=float("nan")), "positive_threshold"),
        (RewardBalancedConfig, dict(enabled="yes"), "credit.batching.reward_balanced.enabled"),
        (BatchingConfig, dict(query_preserved=1), "credit.batching.query_preserved"),
        (DiagnosticsConfig, dict(token_flip_every=-2), "credit.diagnostics.token_flip_every"),
    ],
)
def test_config_errors_name_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=re_escape(key)):
        cls(**kwargs)


def re_escape(text):
    import re

    return re.escape(text)


def test_config_defaults():
    cfg = BatchingConfig()
    assert not cfg.query_preserved and not cfg.reward_balanced.enabled
    assert cfg.reward_balanced.rho == 0.25 and cfg.reward_balanced.max_age == 2
    assert DiagnosticsConfig().token_flip_every == 0


# ----------------------------------------------------------------------------- token flipping


@pytest.mark.parametrize("seed", range(4))
def test_token_flip_vectorised_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 9, 13
    old, new = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = (torch.rand(B, T, generator=g) < 0.8).long()
    adv = torch.randn(B, 1, generator=g).expand(B, T) * mask  # GRPO: constant per rollout
    adv = adv + 0.1 * torch.randn(B, T, generator=g) * mask  # token-level (KTAE-like) wiggle
    adv[0] = 0  # a rollout with zero advantage counts for neither sign
    new[1] = old[1]  # no movement: not a flip
    got, ref = token_flip_shares(old, new, adv, mask), token_flip_shares_loop(old, new, adv, mask)
    assert got.keys() == ref.keys()
    for key in got:
        assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12)


def test_token_flip_by_hand():
    old = torch.zeros(3, 4)
    new = torch.tensor([[1.0, -1.0, 1.0, 9.0], [-1.0, -1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    adv = torch.tensor([1.0, -1.0, 1.0])[:, None].expand(3, 4) * mask
    out = token_flip_shares(old, new, adv, mask)
    assert out["positive/share"] == pytest.approx(1 / 3) and out["positive/tokens"] == 3
    assert out["negative/share"] == pytest.approx(1 / 4) and out["negative/tokens"] == 4  # 0.0 does not flip
    empty = token_flip_shares(old, new, torch.zeros(3, 4), mask)
    assert math.isnan(empty["positive/share"]) and math.isnan(empty["negative/share"])
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        token_flip_shares(old, new[:, :3], adv, mask)


def _tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(config).eval()


def _response_log_probs(model, input_ids, prompt_len):
    logits = model(input_ids=input_ids).logits[:, prompt_len - 1 : -1].float()  # predicts response tokens
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, prompt_len:, None]).squeeze(-1)


def test_token_flip_on_a_tiny_model_after_one_step():
    """One policy-gradient step on known advantage signs: the metric equals a direct count, and the
    step moves most tokens the right way (few flips); the opposite step flips most of them."""
    model = _tiny_qwen2()
    g = torch.Generator().manual_seed(1)
    B, prompt_len, T = 8, 4, 12
    input_ids = torch.randint(0, 100, (B, prompt_len + T), generator=g)
    lengths = torch.tensor([12, 10, 7, 12, 5, 9, 12, 11])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    sign = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0])
    adv = sign[:, None] * mask

    with torch.no_grad():
        old = _response_log_probs(model, input_ids, prompt_len)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for direction in (1.0, -1.0):
        model.load_state_dict(state)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        logp = _response_log_probs(model, input_ids, prompt_len)
        loss = -(direction * adv * logp * mask).sum() / mask.sum()  # policy gradient (or its opposite)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            new = _response_log_probs(model, input_ids, prompt_len)
        out = token_flip_shares(old, new, adv, mask)
        # direct count, written out without the module's helpers
        delta = new - old
        for name, rows in (("positive", sign > 0), ("negative", sign < 0)):
            valid = mask[rows].bool()
            wrong = (delta[rows] < 0) if name == "positive" else (delta[rows] > 0)
            assert out[f"{name}/tokens"] == valid.sum().item()
            assert out[f"{name}/share"] == pytest.approx((wrong & valid).sum().item() / valid.sum().item())
        results[direction] = out
    assert results[1.0]["positive/share"] < 0.5 and results[1.0]["negative/share"] < 0.5
    assert results[-1.0]["positive/share"] > 0.5 and results[-1.0]["negative/share"] > 0.5
