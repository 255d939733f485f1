"""Span and answer detection on token offsets (GSM8K worked solutions and hand-written text)."""

import re

import numpy as np
import pytest

from verl_credit.spans import (
    ARITHMETIC,
    SpanParams,
    find_answer_start,
    find_spans,
    token_anchors,
    token_char_offsets,
)

CALC = re.compile(r"<<([^>]*)>>")
CUT = re.compile(r"(?<=[.!?])\s+|\n+")  # METHODS.md section 2: ., !, ? followed by space, and line breaks


def _spans(tokenizer, text, **params):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    sp = find_spans(tokenizer, [ids], SpanParams(**params))[0]
    return ids, sp


def _texts(tokenizer, ids, sp, kind=None):
    return [
        tokenizer.decode(ids[a:b]) for (a, b), k in zip(sp.spans, sp.kinds, strict=True) if kind is None or k == kind
    ]


def _sentences(text):
    return [s.strip() for s in CUT.split(text) if s.strip()]


def _check_layout(sp, n_tokens):
    ranges = sorted(sp.spans)
    assert ranges == sp.spans, "spans are returned sorted"
    for (_, a1), (b0, _) in zip(ranges, ranges[1:], strict=False):
        assert a1 <= b0, "spans overlap"
    for s0, s1 in sp.spans:
        assert 0 <= s0 < s1 <= n_tokens
        if sp.answer:
            assert s1 <= sp.answer[0], "span overlaps the answer"


def _check_sentence_ownership(tokenizer, ids, sp, reasoning):
    """Every sentence span decodes to one whole sentence of the reasoning: all of its own tokens
    and no piece of the sentence before or after it."""
    sentences = _sentences(reasoning)
    for piece, kind in zip(_texts(tokenizer, ids, sp), sp.kinds, strict=True):
        if kind == "sentence":
            assert piece.strip() in sentences, piece


# --- sentence spans and token ownership -------------------------------------------------------

ISSUE_TEXT = "First we add the two numbers together. Then we multiply the result by three.\nFinal answer: 12"


@pytest.mark.parametrize("which", ["tiny", "gsm8k"])
def test_a_token_belongs_to_the_sentence_of_its_first_non_space_character(which, request):
    """issue 13 example: ' Then' (a BPE token with its leading space) starts the second sentence."""
    tok = request.getfixturevalue("tiny")[1] if which == "tiny" else request.getfixturevalue("gsm8k_tokenizer")
    ids, sp = _spans(tok, ISSUE_TEXT)
    assert sp.kinds == ["sentence", "sentence"]
    assert [t.strip() for t in _texts(tok, ids, sp)] == [
        "First we add the two numbers together.",
        "Then we multiply the result by three.",
    ]
    assert tok.decode(ids[sp.answer[0] : sp.answer[1]]).strip() == "Final answer: 12"
    _check_sentence_ownership(tok, ids, sp, ISSUE_TEXT[: ISSUE_TEXT.index("Final")])


def test_leading_space_token_moves_with_its_word(gsm8k_tokenizer):
    """With the GSM8K tokenizer ' The' is one token: it belongs to the sentence it starts."""
    tok = gsm8k_tokenizer
    text = "She has 7 apples. So 7 * 2 = 14. Then she sells $10. The price is 3.5 dollars.\n#### 14"
    ids, sp = _spans(tok, text)
    assert " The" in [tok.decode([i]) for i in ids]
    assert [t.strip() for t in _texts(tok, ids, sp)] == [
        "She has 7 apples.",
        "7 * 2 = 14",
        "Then she sells $10.",
        "The price is 3.5 dollars.",
    ]
    assert sp.kinds == ["sentence", "arithmetic", "sentence", "sentence"]


@pytest.mark.parametrize("which", ["tiny", "gsm8k"])
def test_multi_byte_text_spans_whole_sentences(which, request):
    tok = request.getfixturevalue("tiny")[1] if which == "tiny" else request.getfixturevalue("gsm8k_tokenizer")
    text = (
        "Café crème costs three euros — naïve résumé! Why does the café charge €3.50 here? "
        "Because 3.5 + 1.5 = 5 euros in total.\nThe final answer is 5"
    )
    ids, sp = _spans(tok, text)
    text_tokens = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in t for t in text_tokens), "the fixture splits a multi-byte character across tokens"
    got = [t.strip() for t in _texts(tok, ids, sp)]
    assert got == [
        "Café crème costs three euros — naïve résumé!",
        "Why does the café charge €3.50 here?",
        "3.5 + 1.5 = 5",
    ]
    _check_sentence_ownership(tok, ids, sp, text[: text.index("The final")])


def test_token_anchors_skip_leading_white_space():
    text = "ab. \n Cd  e"
    starts = np.array([0, 2, 3, 5, 7, 8, 9, 10])
    ends = np.array([2, 3, 5, 7, 8, 9, 10, 11])  # "ab" "." " \n" " C" "d" " " " " "e"
    assert token_anchors(text, starts, ends).tolist() == [0, 2, 3, 6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="1-D of one length"):
        token_anchors(text, starts, ends[:-1])


def test_a_token_holding_two_sentences_belongs_to_neither():
    """A BPE without a pre-tokenizer merges '. Then' into one token: no span may hold it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["apples. Then", "pears. Then", "we count all the red apples", "we count all the green pears"] * 50
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=290, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    text = "we count all the red apples. Then we count all the green pears. Then we stop"
    ids, sp = _spans(tok, text, min_sentence_tokens=2)
    assert ". Then" in [tok.decode([i]) for i in ids]
    sentences = _sentences(text)
    got = [t.strip() for t in _texts(tok, ids, sp)]
    assert got == ["we count all the red apples", "we count all the green pears", "we stop"]
    for g in got:
        assert sum(g in s for s in sentences) == 1, "a span lies inside one sentence"


def test_every_line_break_ends_a_sentence(tiny):
    _, tok = tiny
    text = (
        "First line has no full stop at its end\nSecond line goes on without one either\n\n"
        "A new paragraph starts here, then it stops! Does it ask a question? Yes it does indeed"
    )
    ids, sp = _spans(tok, text)
    assert [t.strip() for t in _texts(tok, ids, sp)] == _sentences(text)
    assert len(sp.spans) == 5
    _check_sentence_ownership(tok, ids, sp, text)


def test_overlong_sentence_is_dropped_never_cut(tiny):
    _, tok = tiny
    long = "Tom counts " + " ".join(["apples"] * 40) + " again."
    text = f"He starts counting here now. {long} Then he stops counting here.\n#### 3"
    ids, sp = _spans(tok, text)
    n_long = len(tok(" " + long, add_special_tokens=False)["input_ids"])
    assert n_long > 50
    assert [t.strip() for t in _texts(tok, ids, sp)] == ["He starts counting here now.", "Then he stops counting here."]
    ids, sp = _spans(tok, text, max_span_tokens=n_long + 5)
    assert long in [t.strip() for t in _texts(tok, ids, sp)]


def test_gsm8k_spans_are_whole_sentences_or_calculations(gsm8k, gsm8k_tokenizer):
    """Whatever max_span_tokens is, no span is a piece of a sentence or a number."""
    tok = gsm8k_tokenizer
    for max_span_tokens in (8, 50):
        n_sentences = 0
        for row in gsm8k[:150]:
            text = CALC.sub("", row["answer"])
            ids, sp = _spans(tok, text, max_spans=64, max_span_tokens=max_span_tokens)
            _check_layout(sp, len(ids))
            reasoning = text[: text.rindex("####")]
            sentences = set(_sentences(reasoning))
            calcs = {m.group() for m in ARITHMETIC.finditer(reasoning)}
            for (s0, s1), kind, piece in zip(sp.spans, sp.kinds, _texts(tok, ids, sp), strict=True):
                assert s1 - s0 <= max_span_tokens
                piece = piece.strip()
                if kind == "sentence":
                    assert piece in sentences
                    n_sentences += 1
                else:
                    assert piece in calcs or piece.rstrip("%") in calcs, piece
                    assert not piece.endswith((".", ",")), piece
        assert n_sentences > (2 if max_span_tokens == 8 else 50)


def test_every_gsm8k_calculation_is_an_arithmetic_span(gsm8k, gsm8k_tokenizer):
    found = total = 0
    for row in gsm8k:
        text = row["answer"]
        ids, sp = _spans(gsm8k_tokenizer, text, max_spans=64)
        _, starts, ends = token_char_offsets(gsm8k_tokenizer, ids)
        _check_layout(sp, len(ids))
        assert sp.answer is not None
        answer_text = gsm8k_tokenizer.decode(ids[sp.answer[0] : sp.answer[1]])
        assert answer_text.startswith("####") and answer_text.split()[-1] == text.split()[-1]
        covered = [
            (int(starts[s0]), int(ends[s1 - 1]))
            for (s0, s1), kind in zip(sp.spans, sp.kinds, strict=True)
            if kind == "arithmetic"
        ]
        for m in CALC.finditer(text):
            if not re.search(r"[\d)]\s*[-+*/]\s*[\d(.]", m.group(1)):
                continue  # "125=125", "+8=8": no operation between two numbers
            total += 1
            found += any(c0 <= m.start(1) and m.end(1) <= c1 for c0, c1 in covered)
    assert total > 500
    assert found == total, f"{total - found} of {total} calculations not covered by an arithmetic span"


def test_span_budget_and_priority(gsm8k_tokenizer):
    text = "We know 2+3=5 so far. " * 8 + "Then this is a long sentence without numbers at all here. " * 5 + "#### 5"
    _, sp = _spans(gsm8k_tokenizer, text, max_spans=10)
    assert len(sp.spans) == 10
    assert sp.kinds.count("arithmetic") == 8  # arithmetic first, then sentences fill the budget
    assert sp.spans == sorted(sp.spans)


# --- arithmetic spans ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, calculation",
    [
        ("Each box holds 7 * 2 = 14. Then we stop.", "7 * 2 = 14"),
        ("Two shirts cost 2 * 5 = $10. Then we stop.", "2 * 5 = $10"),
        ("The price rose 3.5 * 2 = 7.0, then fell.", "3.5 * 2 = 7.0"),
        ("The share is 50% / 2 = 25%. Then we stop.", "50% / 2 = 25%"),
        ("In all 4 * 5 = 20 + 5 = 25 apples are left.", "4 * 5 = 20 + 5 = 25"),
        ("Half of it is \\frac{1}{2} \\times 36 = 18 sheep.", "\\frac{1}{2} \\times 36 = 18"),
        ("Each gets \\frac{36}{4} = 9 cards, no more.", "\\frac{36}{4} = 9"),
        ("So (3 + 4) * 2 = 14, as said.", "(3 + 4) * 2 = 14"),
        ("We know (so 3 + 4 = 7) that much.", "3 + 4 = 7"),
        ("Inline math $4 + 5 = 9$ is used here.", "4 + 5 = 9"),
        ("We pay 1,000 + 2,000 = 3,000. Then we stop.", "1,000 + 2,000 = 3,000"),
    ],
)
def test_arithmetic_span_ends_at_its_result(tiny, text, calculation):
    _, tok = tiny
    ids, sp = _spans(tok, text + "\n#### 1")
    assert [t.strip() for t in _texts(tok, ids, sp, "arithmetic")] == [calculation]
    _check_layout(sp, len(ids))


def test_arithmetic_pattern():
    found = [m.group() for m in ARITHMETIC.finditer("a 3*.25=.75 b 1,000 + 2,000 = 3,000 c (3+4)*2=14")]
    assert found == ["3*.25=.75", "1,000 + 2,000 = 3,000", "(3+4)*2=14"]
    assert [m.group() for m in ARITHMETIC.finditer("x = 5 = 5 and 2 = 2.")] == []  # no operation
    assert [m.group() for m in ARITHMETIC.finditer("3 + 4 = 7\n- 2 = 5")] == ["3 + 4 = 7"]  # one line
    assert [m.group() for m in ARITHMETIC.finditer("5 = 5 + 2 = 7")] == ["5 + 2 = 7"]


# --- answer detection ----------------------------------------------------------------------------

HEADERS = (
    "#### Step 1\nAdd the two bags of apples together to get 3 + 4 = 7 apples.\n"
    "#### Step 2\nDouble the apples because the neighbour brings as many again: 7 * 2 = 14.\n"
    "#### 14"
)


@pytest.mark.parametrize(
    "text, answer",
    [
        (HEADERS, "#### 14"),
        ("##### Notes\nWe add 3 and 4 to get seven apples in the basket today.\n#### 7", "#### 7"),
        ("#### **Step one**\nWe add 3 and 4 and so the basket holds 7.\n#### 7", "#### 7"),
        (
            "The final answer depends on two steps. First 4 * 5 = 20. Then 20 + 5 = 25.\n#### 25",
            "#### 25",
        ),
        (
            'I must write "####" before my result, and "final answer" too. So 4 + 5 = 9.\nFinal answer: 9',
            "Final answer: 9",
        ),
        ("#### 3\nWait, I forgot the last bag, so 3 + 1 = 4.\n#### 4", "#### 4"),
        (
            "So 3 * 4 = 12. \\boxed{12}. Let me verify: 12 / 4 = 3, correct.",
            "\\boxed{12}. Let me verify: 12 / 4 = 3, correct.",
        ),
        ("Thus 3 + 4 = 7. The final answer is $\\boxed{7}$.", "final answer is $\\boxed{7}$."),
        (
            "Thus 3 + 4 = 7.\nFinal Answer: The final answer is 7. I hope it is correct.",
            "Final Answer: The final answer is 7. I hope it is correct.",
        ),
        ("Thus 3 + 4 = 7.\n**Final Answer**\n\\[\n\\boxed{7}\n\\]", "Final Answer**\n\\[\n\\boxed{7}\n\\]"),
        ("x #### 3 final answer 4", "final answer 4"),
        ("Sum 3 + 4 = 7.\n#### 7\n####", "#### 7\n####"),
        ("Straße İİİ İstanbul: 3 + 4 = 7. FINAL ANSWER: 7", "FINAL ANSWER: 7"),
        ("苹果一共有 3 + 4 = 7 个。\n#### 7", "#### 7"),
    ],
)
def test_answer_is_the_final_answer(text, answer):
    start = find_answer_start(text, SpanParams())
    assert start is not None and text[start:] == answer


@pytest.mark.parametrize(
    "text",
    [
        "I think the apples are 5 and that is it",
        "#### Step 1\nAdd the two bags of apples together to get 3 + 4 = 7 apples in the basket.",
        "The final answer depends on two steps that we work out below with care, first the sum of "
        "both bags of apples and then the product with the number of days in the week.",
        "\\boxed{12} was my first guess, but I forgot that the neighbour brings another bag of apples "
        "every single day of the week, so I have to start over from the very beginning.",
        "#### 7\n然后我们再检查一遍这个答案是否正确因为题目要求我们仔细计算每一个步骤",
        "Nothing after the marker: ####",
    ],
)
def test_no_final_answer(text):
    assert find_answer_start(text, SpanParams()) is None


def test_answer_max_words_is_the_limit():
    text = "#### 18\n\nI hope this helps! Let me know if you have any other questions."
    assert find_answer_start(text, SpanParams()) == 0  # 11 words after the marker
    assert find_answer_start(text, SpanParams(answer_max_words=10)) is None
    assert find_answer_start("#### 18", SpanParams(answer_max_words=0)) == 0


def test_header_response_keeps_its_reasoning(tiny):
    """A '#### Step 1' header does not make the whole response the answer: the steps are spans and
    the reasoning the reference answer (R3) and the length reward see ends before the last '####'."""
    from verl_credit.scoring import build_variants

    _, tok = tiny
    ids, sp = _spans(tok, HEADERS)
    assert tok.decode(ids[sp.answer[0] : sp.answer[1]]).strip() == "#### 14"
    assert _texts(tok, ids, sp, "arithmetic") and [t.strip() for t in _texts(tok, ids, sp, "arithmetic")] == [
        "3 + 4 = 7",
        "7 * 2 = 14",
    ]
    import torch

    prompt, response = torch.tensor([1, 2]), torch.tensor(ids)
    gold = torch.tensor(tok("#### 14", add_special_tokens=False)["input_ids"])
    v = build_variants([prompt], [response], [sp], [0], tok.pad_token_id, gold_answers=[gold], with_spans=False)
    reasoning = tok.decode(v.sequences[0][2 : int(v.targets[0, 0])].tolist())
    assert reasoning.rstrip().endswith("7 * 2 = 14.") and reasoning.count("####") == 2


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


def test_special_token_text_is_not_answer_material(tiny):
    """The decoded eos ('<|im_end|>') after a marker is neither a word of the answer nor reasoning."""
    _, tok = tiny
    ids, sp = _spans(tok, "#### 18", answer_max_words=0)
    assert sp.answer == (0, len(ids) - 1)


def test_only_an_answer(tiny):
    _, tok = tiny
    _, sp = _spans(tok, "#### 18")
    assert sp.spans == [] and sp.answer == (0, sp.length)


def test_unicode_and_truncated_response(tiny):
    _, tok = tiny
    text = "Café crème costs €3.50 — naïve! Because 3.5 + 1.5 = 5 euros in total. Then the next step is"
    ids, sp = _spans(tok, text)
    assert sp.answer is None  # truncated before any answer
    assert [t.strip() for t in _texts(tok, ids, sp, "arithmetic")] == ["3.5 + 1.5 = 5"]
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
    assert [tok.decode(ids[a:b]).strip() for a, b in sp.spans] == ["12 * 3 = 36"]


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


def test_bad_params_name_the_key():
    with pytest.raises(ValueError, match=r"credit\.counterfactual\.max_spans"):
        SpanParams(max_spans=0)
    with pytest.raises(ValueError, match=r"credit\.counterfactual\.answer_max_words"):
        SpanParams(answer_max_words=-1)
    with pytest.raises(ValueError, match=r"credit\.counterfactual\.answer_markers"):
        SpanParams(answer_markers="####")
    with pytest.raises(ValueError, match=r"credit\.counterfactual\.boxed_marker"):
        SpanParams(boxed_marker="")


def test_empty_and_special_only_responses(tiny):
    _, tok = tiny
    empty, only_eos = find_spans(tok, [[], [tok.eos_token_id, tok.eos_token_id]])
    assert (empty.answer, empty.spans, empty.length) == (None, [], 0)
    assert (only_eos.answer, only_eos.spans, only_eos.length) == (None, [], 0)
