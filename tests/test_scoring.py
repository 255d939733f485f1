"""Scoring span-masked variants with a causal LM: equal to a direct per-variant computation."""

import math

import pytest
import torch

from verl_credit.scoring import CounterfactualConfig, build_variants, hf_scorer, score_spans
from verl_credit.spans import find_spans

COMPLETIONS = [
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day.\n#### 18",
    "It takes 2/2=1 bolt of white fiber. So the total is 2+1=3 bolts.\nThe final answer is 3",
    "First compute 12 * 7 = 84. Then add the remaining 16 apples to get 100. \\boxed{100}",
    "no answer here, the text just stops",
]


def _rollouts(tok):
    prompts = [torch.tensor(tok(f"Question {i}: how many?")["input_ids"]) for i in range(len(COMPLETIONS))]
    responses = [torch.tensor(tok(c)["input_ids"] + [tok.eos_token_id]) for c in COMPLETIONS]
    return prompts, responses


@torch.no_grad()
def _direct(model, seq, t0, t1):
    """log P(seq[t0:t1] | seq[:t0]) from one unbatched forward of this sequence alone."""
    logp = torch.log_softmax(model(input_ids=seq.unsqueeze(0)).logits[0].double(), dim=-1)
    return sum(float(logp[t - 1, seq[t]]) for t in range(t0, t1))


def test_scores_equal_direct_per_variant_computation(tiny):
    model, tok = tiny
    prompts, responses = _rollouts(tok)
    cfg = CounterfactualConfig(max_batch_tokens=64)  # several micro-batches with padding
    res = score_spans(tok, hf_scorer(model, tok.pad_token_id, cfg.max_batch_tokens), prompts, responses, cfg)
    spans = find_spans(tok, [r.tolist() for r in responses], cfg)
    checked = 0
    for i, sp in enumerate(spans):
        if sp.answer is None:
            assert torch.isnan(res.scores[i]).all() and not res.scored[i]
            continue
        P = prompts[i].numel()
        base = torch.cat([prompts[i], responses[i][: sp.answer[1]]])
        target = (P + sp.answer[0], P + sp.answer[1])
        assert res.scores[i, 0].item() == pytest.approx(_direct(model, base, *target), abs=1e-5)
        for k, (s0, s1) in enumerate(sp.spans):
            variant = base.clone()
            variant[P + s0 : P + s1] = tok.pad_token_id
            assert res.scores[i, k + 1].item() == pytest.approx(_direct(model, variant, *target), abs=1e-5)
            checked += 1
        assert torch.isnan(res.scores[i, len(sp.spans) + 1 :]).all()
        assert res.spans[i, : len(sp.spans)].tolist() == [list(s) for s in sp.spans]
    assert checked >= 4


def test_only_requested_rows_and_duplicates_once(tiny):
    model, tok = tiny
    prompts, responses = _rollouts(tok)
    prompts, responses = prompts + [prompts[0]], responses + [responses[0]]  # row 4 duplicates row 0
    cfg = CounterfactualConfig()
    calls = []
    base = hf_scorer(model, tok.pad_token_id)

    def counting(seqs, targets, groups=None):
        calls.append(len(seqs))
        return base(seqs, targets, groups)

    res = score_spans(tok, counting, prompts, responses, cfg, rows=[0, 2, 4])
    assert torch.equal(res.scores[4].nan_to_num(7.0), res.scores[0].nan_to_num(7.0))
    assert torch.isnan(res.scores[1]).all() and torch.isnan(res.scores[3]).all()
    n_spans = (res.spans[0, :, 0] >= 0).sum() + (res.spans[2, :, 0] >= 0).sum()
    assert calls == [int(n_spans) + 2]  # rows 0 and 2 once each, originals included
    assert 0 < res.forward_tokens < res.naive_tokens


def test_gold_answer_is_teacher_forced_after_the_reasoning(tiny):
    model, tok = tiny
    prompts, responses = _rollouts(tok)
    gold = [torch.tensor(tok(" #### 18")["input_ids"]) for _ in responses]
    cfg = CounterfactualConfig()
    spans = find_spans(tok, [r.tolist() for r in responses], cfg)
    variants = build_variants(prompts, responses, spans, [0, 3], tok.pad_token_id, gold)
    originals = [v for v in range(len(variants.sequences)) if variants.spans[v] == -1]
    assert variants.rows[originals].tolist() == [0, 3]  # the no-answer rollout is scored on the gold answer
    for v in originals:
        row = int(variants.rows[v])
        t0, t1 = variants.targets[v].tolist()
        assert variants.sequences[v][t0:t1].tolist() == gold[row].tolist()
        assert t0 == prompts[row].numel() + spans[row].reasoning_end
    res = score_spans(tok, hf_scorer(model, tok.pad_token_id), prompts, responses, cfg, rows=[0], gold_answers=gold)
    seq, (t0, t1) = variants.sequences[originals[0]], variants.targets[originals[0]].tolist()
    assert res.scores[0, 0].item() == pytest.approx(_direct(model, seq, t0, t1), abs=1e-4)


def test_config_validation_names_keys():
    with pytest.raises(ValueError, match=r"credit\.counterfactual\.answer_source"):
        CounterfactualConfig(answer_source="mine")
    with pytest.raises(ValueError, match=r"credit\.counterfactual\.w_min"):
        CounterfactualConfig(w_min=5.0)
    assert math.isclose(CounterfactualConfig().answer_weight, 1.5)


def test_reference_logprobs_equal_direct_per_rollout_forward(tiny):
    from verl_credit.scoring import score_reference

    model, tok = tiny
    prompts, responses = _rollouts(tok)
    refs = [torch.tensor(tok("#### 18", add_special_tokens=False)["input_ids"]) for _ in responses]
    lp, mask, forward = score_reference(tok, hf_scorer(model, tok.pad_token_id), prompts, responses, refs, [0, 1, 3])
    spans = find_spans(tok, [r.tolist() for r in responses], CounterfactualConfig())
    J = refs[0].numel()
    assert mask[[0, 1, 3]].sum(1).tolist() == [J] * 3 and mask[2].sum() == 0
    for row in (0, 1, 3):  # row 3 has no answer marker: its whole response is the reasoning
        reasoning = responses[row][: spans[row].reasoning_end]
        seq = torch.cat([prompts[row], reasoning, refs[row]])
        t0 = prompts[row].numel() + reasoning.numel()
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=seq.unsqueeze(0)).logits[0].double(), dim=-1)
        direct = torch.tensor([float(logp[t - 1, seq[t]]) for t in range(t0, t0 + J)], dtype=torch.float64)
        torch.testing.assert_close(lp[row, :J].double(), direct, rtol=0, atol=1e-5)
    assert spans[3].answer is None and spans[3].reasoning_end == spans[3].length
    assert forward > 0
