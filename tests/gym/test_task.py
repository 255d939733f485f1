"""The gym's task: labels follow the causal structure, answers verify, token labels map through BPE."""

import random

import pytest

from verl_credit.gym.task import (
    ANSWER,
    CAUSAL,
    FILLER,
    FILLERS,
    FORMAT,
    SIDE,
    Problem,
    TaskConfig,
    demonstration,
    grade,
    label_solution,
    make_problems,
    token_labels,
)
from verl_credit.testing import build_tiny_qwen2, load_tiny


def _text(segs):
    return "".join(s.text for s in segs)


def test_problems_are_seeded_and_answers_follow_the_ops():
    a, b = make_problems(50, seed=3), make_problems(50, seed=3)
    assert a == b and a != make_problems(50, seed=4)
    cfg = TaskConfig()
    for p in a:
        assert cfg.min_steps <= len(p.ops) <= cfg.max_steps
        v = p.start
        for op, x in zip(p.ops, p.operands, strict=True):
            v = {"+": v + x, "-": v - x, "*": v * x}[op]
            assert 0 <= v <= cfg.max_value
        assert p.answer == v
        assert p.prompt == f"Q {p.start}" + "".join(f"{o}{x}" for o, x in zip(p.ops, p.operands, strict=True)) + "\n"


def test_perfect_demonstration_verifies_and_every_step_is_causal():
    rng = random.Random(0)
    for p in make_problems(30, seed=1):
        segs = demonstration(p, rng, perfect=True)
        assert grade(_text(segs), p) == 1.0
        causal = [s.text for s in segs if s.label == CAUSAL]
        values = [p.start, *p.values]
        expected = []
        for k, x in enumerate(p.operands):
            expected += [str(values[k]), str(x), str(values[k + 1])]
        assert causal == expected  # operands and results of every step, nothing else
        assert [s.text for s in segs if s.label == ANSWER] == [str(p.answer)]
        assert not [s for s in segs if s.label in (FILLER, SIDE)]


def test_parser_agrees_with_the_generator_on_imperfect_demonstrations():
    rng = random.Random(1)
    cfg = TaskConfig(filler_rate=0.5, side_rate=0.5, error_rate=0.3)
    seen = set()
    for p in make_problems(200, seed=2, config=cfg):
        segs = [s for s in demonstration(p, rng, cfg) if s.text]
        text = _text(segs)
        parsed = label_solution(text)
        assert [(s.text, s.label) for s in parsed] == [(s.text, s.label) for s in segs]
        seen |= {s.label for s in segs}
        assert all(s.text in FILLERS for s in segs if s.label == FILLER)
        wrong = grade(text, p) == 0.0
        written = [int(s.text) for s in segs if s.label == CAUSAL][2::3]  # results of the steps
        assert wrong == (written[-1] != p.answer)  # the answer verifies exactly when the chain ends right
    assert seen == {CAUSAL, FILLER, SIDE, FORMAT, ANSWER}


def test_chain_is_read_from_the_text():
    # the 2nd line repeats a result the answer does not depend on; the note line is a side step
    text = "3+4=7\n7*2=14\nnote 1+1=2\n7+1=8\n#### 8"
    labels = {(s.text, s.label) for s in label_solution(text)}
    segs = label_solution(text)
    by_line = [[s for s in segs if s.label in (CAUSAL, SIDE)][k : k + 3] for k in range(0, 12, 3)]
    assert [s.label for s in by_line[0]] == [CAUSAL] * 3
    assert [s.label for s in by_line[1]] == [SIDE] * 3  # 7*2=14 is not on the chain to 8
    assert [s.label for s in by_line[2]] == [SIDE] * 3
    assert [s.label for s in by_line[3]] == [CAUSAL] * 3
    assert ("8", ANSWER) in labels
    # no answer: nothing is causal; free text is filler
    assert all(s.label != CAUSAL for s in label_solution("3+4=7\nblah blah"))
    assert grade("3+4=7\n#### 7", Problem(3, ("+",), (4,))) == 1.0
    assert grade("3+4=7\n#### 8", Problem(3, ("+",), (4,))) == 0.0
    assert grade("3+4=7", Problem(3, ("+",), (4,))) == 0.0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    rng = random.Random(0)
    problems = make_problems(300, seed=0)
    corpus = [p.prompt + _text(demonstration(p, rng)) for p in problems]
    path = build_tiny_qwen2(tmp_path_factory.mktemp("tok"), corpus, vocab_size=400)
    return load_tiny(path)[1]


def test_token_labels_follow_character_labels(tokenizer):
    rng = random.Random(5)
    cfg = TaskConfig(filler_rate=0.5, side_rate=0.5, error_rate=0.12)  # the BPE below has no "=-" merges to test
    for p in make_problems(40, seed=9, config=cfg):
        segs = [s for s in demonstration(p, rng, cfg) if s.text]
        text = _text(segs)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        labels = token_labels(tokenizer, ids).tolist()
        assert labels == token_labels(tokenizer, ids, segments=segs).tolist()
        assert labels[-1] == FORMAT  # eos
        # every digit token is causal exactly when it sits in a causal step
        for t, i in enumerate(ids[:-1]):
            piece = tokenizer.decode([i])
            if piece.strip().isdigit():
                assert labels[t] in (CAUSAL, SIDE, ANSWER)
        causal_digits = "".join(tokenizer.decode([i]) for i, lab in zip(ids, labels, strict=True) if lab == CAUSAL)
        assert causal_digits.replace(" ", "") == "".join(s.text for s in segs if s.label == CAUSAL)
        filler = "".join(tokenizer.decode([i]) for i, lab in zip(ids, labels, strict=True) if lab == FILLER)
        assert filler.replace(" ", "") == "".join(s.text for s in segs if s.label == FILLER).replace(" ", "")
