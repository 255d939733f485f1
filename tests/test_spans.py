"""Span and answer detection on token offsets (GSM8K worked solutions and hand-written text)."""

import re

import pytest

from verl_credit.spans import ARITHMETIC, SpanParams, find_answer_start, find_spans, token_char_offsets

CALC = re.compile(r"<<([^>]*)>>")


def _spans(tokenizer, text, **params):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    sp = find_spans(tokenizer, [ids], SpanParams(**params))[0]
    return ids, sp


def _check_layout(sp, n_tokens):
    ranges = sorted(sp.spans)
    for (_, a1), (b0, _) in zip(ranges, ranges[1:], strict=False):
        assert a1 <= b0, "spans overlap"
    for s0, s1 in sp.spans:
        assert 0 <= s0 < s1 <= n_tokens
        if sp.answer:
            assert s1 <= sp.answer[0], "span overlaps the answer"


def test_every_gsm8k_calculation_is_a_span(gsm8k, gsm8k_tokenizer):
    rows = gsm8k
    found = total = 0
    for row in rows:
        text = row["answer"]
        ids, sp = _spans(gsm8k_tokenizer, text, max_spans=64)
        _, starts, ends = token_char_offsets(gsm8k_tokenizer, ids)
        _check_layout(sp, len(ids))
        assert sp.answer is not None
        answer_text = gsm8k_tokenizer.decode(ids[sp.answer[0] : sp.answer[1]])
        assert answer_text.startswith("####") and answer_text.split()[-1] == text.split()[-1]
        covered = [(int(starts[s0]), int(ends[s1 - 1])) for s0, s1 in sp.spans]
        for m in CALC.finditer(text):
            total += 1
            found += any(c0 <= m.start(1) and m.end(1) <= c1 for c0, c1 in covered)
    assert total > 500
    assert found == total, f"{total - found} of {total} calculations not covered by a span"


def test_span_budget_and_priority(gsm8k_tokenizer):
    text = "We know 2+3=5 so far. " * 8 + "Then this is a long sentence without numbers at all here. " * 5 + "#### 5"
    _, sp = _spans(gsm8k_tokenizer, text, max_spans=10)
    assert len(sp.spans) == 10
    assert sp.kinds.count("arithmetic") == 8  # arithmetic first, then sentences fill the budget
    assert sp.spans == sorted(sp.spans)


@pytest.mark.parametrize(
    "text, answer_text",
    [
        ("So 3 * 4 = 12 apples are left.\nThe Final Answer: 12", "Final Answer: 12"),
        ("Compute 5 + 5 = 10 then double it to get 20. \\boxed{20}", "\\boxed{20}"),
        ("#### 7", "#### 7"),
    ],
)
def test_answer_markers(tiny, text, answer_text):
    _, tok = tiny
    ids, sp = _spans(tok, text)
    assert sp.answer is not None
    assert tok.decode(ids[sp.answer[0] : sp.answer[1]]).strip() == answer_text
    _check_layout(sp, len(ids))


def test_no_answer_marker_and_no_spans(tiny):
    _, tok = tiny
    ids, sp = _spans(tok, "I think the apples are 5 and that is it")
    assert sp.answer is None and sp.reasoning_end == len(ids) - 1  # eos is not part of the reasoning
    ids, sp = _spans(tok, "ok")
    assert sp.spans == [] and sp.answer is None


def test_only_an_answer(tiny):
    _, tok = tiny
    _, sp = _spans(tok, "#### 18")
    assert sp.spans == [] and sp.answer == (0, sp.length)


def test_unicode_and_truncated_response(tiny):
    _, tok = tiny
    text = "Café crème costs €3.50 — naïve! Because 3.5 + 1.5 = 5 euros in total. Then the next step is"
    ids, sp = _spans(tok, text)
    assert sp.answer is None  # truncated before any answer
    kinds = dict(zip(sp.spans, sp.kinds, strict=True))
    arith = [s for s, k in kinds.items() if k == "arithmetic"]
    assert len(arith) == 1 and tok.decode(ids[arith[0][0] : arith[0][1]]).strip() == "3.5 + 1.5 = 5"
    _check_layout(sp, len(ids))


def test_offsets_when_ids_are_not_the_canonical_encoding(tiny):
    _, tok = tiny
    pieces = ["So 1", "2 * 3", " = 36. ", "#### 36"]
    ids = [i for p in pieces for i in tok(p, add_special_tokens=False)["input_ids"]]
    text, starts, ends = token_char_offsets(tok, ids)
    assert text == "".join(pieces)
    assert all(tok.decode(ids[: k + 1]) == text[: ends[k]] for k in range(len(ids)))
    sp = find_spans(tok, [ids])[0]
    assert sp.answer is not None and tok.decode(ids[sp.answer[0] : sp.answer[1]]) == "#### 36"


def test_byte_level_tokens_holding_several_digits(tmp_path):
    """GPT-2 style BPE (no digit splitting): one token can hold ' 123' with its leading space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["so 123 * 45 = 5535 and 5535 + 123 = 5658 #### 5658"] * 50
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    text = "so 123 * 45 = 5535 and then #### 5535"
    ids = tok(text)["input_ids"]
    assert any(len(tok.decode([i]).strip()) >= 3 and tok.decode([i]).strip().isdigit() for i in ids)
    sp = find_spans(tok, [ids])[0]
    assert [tok.decode(ids[a:b]).strip() for a, b in sp.spans] == ["123 * 45 = 5535"]
    assert tok.decode(ids[sp.answer[0] : sp.answer[1]]) == " #### 5535"


def test_arithmetic_pattern_and_answer_search():
    assert [m.group() for m in ARITHMETIC.finditer("a 3*.25=.75 b 1,000 + 2,000 = 3,000 c (3+4)*2=14")] == [
        "3*.25=.75",
        "1,000 + 2,000 = 3,000",
        "(3+4)*2=14",
    ]
    assert find_answer_start("x #### 3 final answer 4", SpanParams()) == 2
    assert find_answer_start("nothing here", SpanParams()) is None


def test_bad_params_name_the_key():
    with pytest.raises(ValueError, match=r"credit\.counterfactual\.max_spans"):
        SpanParams(max_spans=0)
