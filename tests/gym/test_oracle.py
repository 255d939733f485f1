"""The gym's ground-truth bounds: the first wrong step found from the text, the targets of correct and
wrong rollouts on hand-written solutions, the weight variants (vectorised = loop reference), anti_oracle
as the complement, and the variant grammar."""

import random

import pytest
import torch
from scipy.stats import chisquare

from verl_credit.gym.oracle import (
    DEFAULT_VARIANT,
    OracleSpec,
    blame_onset,
    first_wrong_step,
    oracle_targets,
    oracle_weights,
    oracle_weights_reference,
    parse_variant,
    shuffle_weights,
)
from verl_credit.gym.rollout import parse_method
from verl_credit.gym.task import ANSWER, CAUSAL, FORMAT, Problem, demonstration, make_problems, token_labels
from verl_credit.spans import token_char_offsets
from verl_credit.testing import build_tiny_qwen2, load_tiny

# Q 7+3*2-4: 7+3=10, 10*2=20, 20-4=16
P = Problem(start=7, ops=("+", "*", "-"), operands=(3, 2, 4))
RIGHT = "7+3=10\nlet me think about it\n10*2=20\nnote 4+5=9\n20-4=16\n#### 16"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    rng = random.Random(0)
    problems = make_problems(300, seed=0)
    corpus = [p.prompt + "".join(s.text for s in demonstration(p, rng)) for p in problems]
    path = build_tiny_qwen2(tmp_path_factory.mktemp("tok"), corpus, vocab_size=400)
    return load_tiny(path)[1]


@pytest.mark.parametrize(
    "text, wrong_line",
    [
        (RIGHT, None),
        ("7+3=10\n10*2=21\n21-4=17\n#### 17", 1),  # a wrong result (carried on consistently)
        ("7+3=10\n11*2=22\n22-4=18\n#### 18", 1),  # a wrong carried operand, the step itself is right
        ("7+3=10\n10*3=30\n30-4=26\n#### 26", 1),  # the wrong operand of the problem
        ("7+3=10\n10+2=12\n12-4=8\n#### 8", 1),  # the wrong op
        ("7+3=10\nnote 1+1=3\n10*2=20\n20-4=16\n#### 16", None),  # side lines are not steps
        ("7+3=10\n10*2=20\n20-4=16\n16-1=15\n#### 15", 3),  # a step beyond the problem's last
        ("7+3=10\n10*2=20\n20-4=16\n#### 15", None),  # only the answer is wrong
        ("7+3=10\n10*2=20\n", None),  # no answer line (stopped or cut)
        ("3+7=10\n10*2=20\n20-4=16\n#### 16", 0),  # operands swapped: not the problem's step
    ],
)
def test_first_wrong_step_is_found_from_the_text(text, wrong_line):
    lines = text.split("\n")
    want = None if wrong_line is None else sum(len(line) + 1 for line in lines[:wrong_line])
    assert first_wrong_step(text, P) == want


def test_blame_onset_without_a_wrong_step_is_the_tail_after_the_last_right_step():
    text = "7+3=10\n10*2=20\n20-4=16\nok so the next step is\n#### 15"
    assert text[blame_onset(text, P) :] == "ok so the next step is\n#### 15"
    assert blame_onset("let me think about it", P) == 0  # no step line: all of it
    assert blame_onset("7+3=10\n10*2=20\n", P) == len("7+3=10\n10*2=20\n")  # nothing follows


def _ids(tokenizer, text, eos=True):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if eos else ids


def _covered(tokenizer, ids, target):
    """The text of the target tokens, special tokens as <eos>."""
    out = []
    for t, i in enumerate(ids):
        if target[t]:
            out.append("<eos>" if i == tokenizer.eos_token_id else tokenizer.decode([i]))
    return "".join(out)


def test_correct_rollout_targets_causal_and_answer_tokens(tokenizer):
    ids = _ids(tokenizer, RIGHT)
    target, fmt = oracle_targets(tokenizer, ids, P, correct=True)
    labels = token_labels(tokenizer, ids, P)
    assert torch.equal(target, (labels == CAUSAL) | (labels == ANSWER))
    assert torch.equal(fmt, labels == FORMAT) and bool(fmt[-1])  # eos is a format token
    covered = _covered(tokenizer, ids, target)
    assert "think" not in covered and "4" in covered and "5" not in covered.replace("16", "")


@pytest.mark.parametrize(
    "text, tail",
    [
        ("7+3=10\n10*2=21\n21-4=17\n#### 17", "10*2=21\n21-4=17\n#### 17<eos>"),
        ("7+3=10\nlet me think about it\n11*2=22\n22-4=18\n#### 18", "11*2=22\n22-4=18\n#### 18<eos>"),
        ("7+3=10\n10*2=20\n20-4=16\n#### 15", "#### 15<eos>"),
        ("7+3=10\n10*2=20\n", "<eos>"),  # stopped without an answer: the eos is the mistake
    ],
)
def test_wrong_rollout_targets_from_the_first_wrong_step_on(tokenizer, text, tail):
    ids = _ids(tokenizer, text)
    target, _ = oracle_targets(tokenizer, ids, P, correct=False)
    assert _covered(tokenizer, ids, target) == tail
    # the targets are a suffix of the response
    first = int(target.nonzero()[0])
    assert bool(target[first:].all()) and not bool(target[:first].any())


def test_wrong_rollout_cut_after_a_right_step_targets_everything(tokenizer):
    ids = _ids(tokenizer, "7+3=10\n10*2=20\n", eos=False)
    target, _ = oracle_targets(tokenizer, ids, P, correct=False)
    assert bool(target.all())


def _random_inputs(seed, B=6, T=9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    target = (torch.rand(B, T, generator=g) < 0.4) & mask
    fmt = (torch.rand(B, T, generator=g) < 0.3) & mask & ~target
    z = torch.tensor([1.0, -1.0, 0.0, 0.5, -0.7, 1.2])[:B]
    return target, fmt, mask, z


SPECS = ["mean1", "mask", "floor0.2", "floor0.3:fmt0", "clip1.5", "persign", "persign:clip2:floor0.1", "mask:fmt0"]


@pytest.mark.parametrize("variant", SPECS)
@pytest.mark.parametrize("seed", range(4))
def test_vectorised_weights_match_the_loop_reference(variant, seed):
    spec = parse_variant(variant)
    args = _random_inputs(seed)
    torch.testing.assert_close(oracle_weights(*args, spec), oracle_weights_reference(*args, spec))


@pytest.mark.parametrize("variant", ["mean1", "floor0.2", "clip2", "mean1:fmt0"])
def test_mean1_weights_have_mean_one_per_rollout_and_zero_padding(variant):
    target, fmt, mask, z = _random_inputs(3)
    w = oracle_weights(target, fmt, mask, z, parse_variant(variant))
    assert bool((w[~mask] == 0).all())
    raw_nonzero = (target | (fmt & (parse_variant(variant).fmt > 0))) & mask
    for i in range(mask.shape[0]):
        if bool(raw_nonzero[i].any()) or parse_variant(variant).floor > 0:
            assert float(w[i][mask[i]].mean()) == pytest.approx(1.0)
    spec = parse_variant(variant)
    if spec.clip is None and spec.floor == 0 and spec.fmt == 0:  # a pure target mask: weight only on targets
        assert bool((w[mask & ~target] == 0).all())


def test_persign_normalises_over_each_sign_of_the_batch():
    target, fmt, mask, z = _random_inputs(1)
    w = oracle_weights(target, fmt, mask, z, parse_variant("persign"))
    for sign in (z > 0, z < 0):
        rows = mask & sign[:, None]
        assert float(w[rows].mean()) == pytest.approx(1.0)


def test_mask_is_zero_one_with_the_format_floor():
    target, fmt, mask, z = _random_inputs(2)
    w = oracle_weights(target, fmt, mask, z, parse_variant("mask"))
    expected = torch.where(target, 1.0, torch.where(fmt, 0.2, 0.0)).double() * mask
    torch.testing.assert_close(w, expected)


def _one_right_two_wrong(tokenizer, texts):
    """Rollouts of P for three texts (rewards 1, 0, 0), their response mask and GRPO's z on valid tokens."""
    from verl_credit.gym.rollout import Rollouts

    rows = [_ids(tokenizer, t) for t in texts]
    T = max(len(r) for r in rows)
    responses = torch.full((3, T), tokenizer.pad_token_id)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        responses[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    r = Rollouts(
        torch.zeros(3, 1, dtype=torch.long),
        torch.ones(3, 1, dtype=torch.long),
        responses,
        mask,
        torch.tensor([1.0, 0.0, 0.0]),
        torch.zeros(3, T, dtype=torch.long),
        ["p0"] * 3,
        [P] * 3,
    )
    z = torch.tensor([1.1547, -0.5774, -0.5774])[:, None] * mask
    return r, mask, z


def test_anti_oracle_is_the_complement(tokenizer):
    from verl_credit.gym.oracle import oracle_advantages

    texts = [RIGHT, "7+3=10\n11*2=22\n22-4=18\n#### 18", "7+3=10\n10*2=20\n20-4=16\n#### 15"]
    r, mask, z = _one_right_two_wrong(tokenizer, texts)
    spec = parse_variant("mask:fmt0")
    a_or, w_or = oracle_advantages(spec, False, r, tokenizer, z)
    a_anti, w_anti = oracle_advantages(spec, True, r, tokenizer, z)
    torch.testing.assert_close(w_or + w_anti, mask.float())  # 0/1 masks that partition the valid tokens
    torch.testing.assert_close(a_or + a_anti, z.float(), atol=1e-6, rtol=0)
    assert bool((w_or[1:, :3] == 0).all())  # the right first step of the wrong rollouts is not blamed
    # the mean-1 variant: mean 1 over each rollout's valid tokens, no weight on padding
    _, w = oracle_advantages(parse_variant("mean1"), False, r, tokenizer, z)
    for i in range(3):
        assert float(w[i][mask[i].bool()].mean()) == pytest.approx(1.0, abs=1e-5)
        assert bool((w[i][~mask[i].bool()] == 0).all())
    # the default (lines:mask:fmt0): 0/1 weights, a superset of the token targets on the correct rollout
    _, w_def = oracle_advantages(parse_variant(None), False, r, tokenizer, z)
    assert set(w_def[mask.bool()].unique().tolist()) <= {0.0, 1.0}
    assert bool((w_def >= w_or).all()) and torch.equal(w_def[1:], w_or[1:])


def test_variant_grammar_and_errors():
    assert parse_variant(None) == parse_variant(DEFAULT_VARIANT) == parse_variant("")
    assert parse_variant("mask") == OracleSpec(scale="mask")
    assert parse_variant("floor0.2:clip3:persign") == OracleSpec(floor=0.2, clip=3.0, norm="persign")
    assert parse_method("oracle").oracle == parse_variant(DEFAULT_VARIANT)
    control = parse_method(f"oracle:{DEFAULT_VARIANT}:shuffle").oracle
    assert control == OracleSpec(scale="mask", fmt=0.0, target="lines", shuffle=True)
    assert control.describe().endswith(":lines:shuffle") and not parse_variant(None).shuffle
    m = parse_method("anti_oracle:mask:fmt0+qp")
    assert (m.estimator, m.oracle, m.query_preserved) == ("anti_oracle", OracleSpec(scale="mask", fmt=0.0), True)
    for bad, message in [
        ("oracle:best", "unknown oracle variant item 'best'"),
        ("oracle:floor2", "floor must lie in [0, 1]"),
        ("oracle:clip0.5", "clip must be > 1"),
        ("oracle:clipx", "expected a number after 'clip'"),
        ("oracle:mask:mean1", "scale given twice"),
        ("oracle:mask:clip3", "clipC needs mean1 weights"),
        ("oracle:shuffle2", "shuffle takes no number"),
        ("oracle:shuffle:shuffle", "shuffle given twice"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_method(bad)


def test_lines_targets_whole_causal_lines_and_eos(tokenizer):
    """``lines``: a correct rollout's targets are every token of its causal step lines and its answer line
    (``=``, ops, newlines, ``#### ``) and the eos; filler and side lines stay out."""
    P = Problem(start=7, ops=("+", "*"), operands=(3, 2))
    text = "7+3=10\nlet me think about it\nnote 4+5=9\n10*2=20\n#### 20"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    tokens_t, fmt = oracle_targets(tokenizer, ids, P, correct=True)
    lines_t, _ = oracle_targets(tokenizer, ids, P, correct=True, target_unit="lines")
    assert bool((tokens_t <= lines_t).all())  # a superset of the token targets
    _, starts, _ = token_char_offsets(tokenizer, ids)
    for k, s in enumerate(starts.tolist()):
        line = text[:s].count("\n") if k < len(ids) - 1 else None
        if line is None:
            assert bool(lines_t[k])  # eos
        else:
            assert bool(lines_t[k]) == (line in (0, 3, 4)), (k, tokenizer.decode([ids[k]]))
    assert bool((lines_t & fmt & ~tokens_t).any())  # format tokens of causal lines were added
    wrong_tokens, _ = oracle_targets(tokenizer, ids, Problem(start=7, ops=("+", "*"), operands=(3, 3)), False)
    wrong_lines, _ = oracle_targets(tokenizer, ids, Problem(start=7, ops=("+", "*"), operands=(3, 3)), False, "lines")
    assert torch.equal(wrong_tokens, wrong_lines)  # wrong rollouts: unchanged
    assert parse_variant("lines:floor0.1") == OracleSpec(floor=0.1, target="lines")


@pytest.mark.parametrize("seed", range(3))
def test_shuffle_keeps_each_rollouts_weights_and_moves_them(seed):
    """The shuffle control permutes a row's valid weights: same multiset per row (sorted equal), zeros
    on padding, valid positions anywhere (not only a prefix); the same generator seed, the same draw;
    over many draws every valid position of a row is hit by its one target about equally often."""
    target, fmt, mask, z = _random_inputs(seed, B=6, T=12)
    mask = mask.clone()
    mask[0, 1] = False  # a hole: valid positions need not be a prefix
    w = oracle_weights(target & mask, fmt & mask, mask, z, parse_variant("mask:floor0.1"))
    out = shuffle_weights(w, mask, torch.Generator().manual_seed(seed))
    assert bool((out[~mask] == 0).all())
    for i in range(6):
        torch.testing.assert_close(out[i][mask[i]].sort().values, w[i][mask[i]].sort().values)
    again = shuffle_weights(w, mask, torch.Generator().manual_seed(seed))
    assert torch.equal(out, again)
    # one target token in a row of 8 valid tokens: where it lands is uniform over the 8 (chi-square)
    one = torch.zeros(2000, 10, dtype=torch.float64)
    one[:, 3] = 1.0
    valid = torch.zeros(2000, 10, dtype=torch.bool)
    valid[:, :8] = True
    landed = shuffle_weights(one, valid, torch.Generator().manual_seed(seed)).argmax(1)
    counts = torch.bincount(landed, minlength=10)
    assert int(counts[8:].sum()) == 0
    assert chisquare(counts[:8].numpy()).pvalue > 1e-3


def test_shuffle_control_moves_the_oracles_weights_off_its_targets(tokenizer):
    """On real rollouts the shuffled default oracle keeps each rollout's kept-token count but no longer
    puts all its weight on the targets of the unshuffled one."""
    from verl_credit.gym.oracle import oracle_advantages

    texts = [RIGHT, "7+3=10\n11*2=22\n22-4=18\n#### 18", "let me think about it\n7+3=10\n10*2=20\n20-4=16\n#### 15"]
    r, mask, z = _one_right_two_wrong(tokenizer, texts)
    _, w = oracle_advantages(parse_variant(None), False, r, tokenizer, z)
    a, w_shuffled = oracle_advantages(parse_variant(f"{DEFAULT_VARIANT}:shuffle"), False, r, tokenizer, z)
    torch.testing.assert_close(w_shuffled.sum(1), w.sum(1))
    assert not torch.equal(w_shuffled, w)
    torch.testing.assert_close(a, (z * w_shuffled).float(), atol=1e-6, rtol=0)
