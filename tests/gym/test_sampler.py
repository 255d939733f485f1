"""The gym's sampler against transformers' ``model.generate`` (greedy: the same tokens, finished rows
dropped from the cache on the way) and against the softmax law (sampling: chi-square tests)."""

import copy
import random

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import DynamicCache

from verl_credit.gym import sampler
from verl_credit.gym.model import load_policy
from verl_credit.gym.task import demonstration, make_problems
from verl_credit.testing import build_tiny_qwen2


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A random tiny Qwen2 with the gym's tokenizer, padded on the left as the gym loads it. Its matrices
    are redrawn with std 0.15 (instead of 0.02) so that greedy paths differ between prompts and change
    token along the way, rather than repeat one token."""
    rng = random.Random(0)
    problems = make_problems(200, seed=0)
    corpus = [p.prompt + "".join(s.text for s in demonstration(p, rng)) for p in problems]
    model, tokenizer = load_policy(build_tiny_qwen2(tmp_path_factory.mktemp("tok"), corpus, vocab_size=400))
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, 0.15)
    return model.eval(), tokenizer


def _prompts(tokenizer, n):
    enc = tokenizer([p.prompt for p in make_problems(n, seed=5)], return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any(), "the test needs prompts of several lengths (left padding)"
    return enc["input_ids"], enc["attention_mask"]


def _pooled(observed, expected):
    """Cells with an expected count under 5 pooled into one (the chi-square approximation needs it)."""
    big = expected >= 5
    observed, expected = observed.astype(float), expected.astype(float)
    if not (~big).any():
        return observed, expected
    return np.append(observed[big], observed[~big].sum()), np.append(expected[big], expected[~big].sum())


def _first_eos(responses, eos):
    """Index of the first eos per row (the width when there is none)."""
    hit = responses == eos
    return torch.where(hit.any(1), hit.float().argmax(1), torch.full((len(hit),), responses.shape[1]))


def test_greedy_equals_model_generate_while_dropping_finished_rows(policy, monkeypatch):
    """With an eos that rows reach at different steps, the sampler drops finished rows from the cache
    (counted) and still returns model.generate's tokens and widths exactly."""
    model, tokenizer = policy
    ids, mask = _prompts(tokenizer, 24)
    pad = tokenizer.pad_token_id
    free = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16, eos_token_id=None)
    free = free[:, ids.shape[1] :]
    # the commonest greedy token becomes the eos: rows then end at different steps
    values, counts = torch.unique(free, return_counts=True)
    eos = int(values[counts.argmax()])
    ends = _first_eos(free, eos)
    assert len(set(ends.tolist())) >= 3 and bool((ends < 15).float().mean() >= 0.5), ends

    calls = []
    select = DynamicCache.batch_select_indices

    def counted(self, indices):
        calls.append(len(indices))
        return select(self, indices)

    monkeypatch.setattr(DynamicCache, "batch_select_indices", counted)
    responses, response_mask = sampler.generate(model, ids, mask, 16, eos, pad, greedy=True)
    assert calls, "no finished row was dropped"
    monkeypatch.setattr(DynamicCache, "batch_select_indices", select)

    reference = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16, eos_token_id=eos, pad_token_id=pad
    )[:, ids.shape[1] :]
    assert responses.shape == reference.shape
    assert torch.equal(responses, reference)
    assert torch.equal(response_mask.sum(1), torch.clamp(_first_eos(reference, eos) + 1, max=reference.shape[1]))


def test_draw_follows_the_softmax_law():
    """One sample per row from softmax(logits): counts over 20 000 rows fit the probabilities (chi-square),
    and a token of probability 0 is never drawn."""
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 0.5, -1.0, float("-inf"), 1.0, 0.0, -0.5, 3.0])
    n = 20_000
    tokens = sampler._draw(logits.expand(n, -1), greedy=False)
    counts = np.bincount(tokens.numpy(), minlength=len(logits))
    assert counts[3] == 0
    p = logits.softmax(-1).double().numpy()
    keep = p > 0
    assert chisquare(counts[keep], n * p[keep] / p[keep].sum()).pvalue > 1e-3
    # an off-by-one in the inverse CDF moves the mass to the neighbouring token: detected
    shifted = np.roll(counts[keep], 1)
    assert chisquare(shifted, n * p[keep] / p[keep].sum()).pvalue < 1e-6


def test_sampled_tokens_follow_the_model(policy):
    """The first and second sampled tokens of one prompt repeated 6000 times follow the model's own
    next-token probabilities (the second given the first, read by a teacher-forced forward). The
    logits are sharpened (lm_head x 4, a copy of the model) so that one first token is common."""
    model, tokenizer = policy
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    ids, mask = _prompts(tokenizer, 3)
    n = 6000
    ids, mask = ids[2:3].expand(n, -1), mask[2:3].expand(n, -1)
    torch.manual_seed(1)
    responses, _ = sampler.generate(model, ids, mask, 2, tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.no_grad():
        real = mask[0].bool()
        logits = model(input_ids=ids[:1, real]).logits[0, -1]
    p = logits.double().softmax(-1).numpy()
    counts = np.bincount(responses[:, 0].numpy(), minlength=len(p))
    assert chisquare(*_pooled(counts, n * p)).pvalue > 1e-3
    # the second token after the commonest first token: its conditional law under the model
    first = int(np.argmax(counts))
    rows = responses[:, 0] == first
    assert int(rows.sum()) > 500
    with torch.no_grad():
        prefix = torch.cat([ids[0, real], torch.tensor([first])])[None]
        q = model(input_ids=prefix).logits[0, -1].double().softmax(-1).numpy()
    m = int(rows.sum())
    counts = np.bincount(responses[rows, 1].numpy(), minlength=len(q))
    assert chisquare(*_pooled(counts, m * q)).pvalue > 1e-3


def test_a_seed_fixes_the_draw_and_masks_stop_after_the_first_eos(policy):
    model, tokenizer = policy
    ids, mask = _prompts(tokenizer, 8)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(3)
    a = sampler.generate(model, ids, mask, 10, eos, pad)
    torch.manual_seed(3)
    b = sampler.generate(model, ids, mask, 10, eos, pad)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    responses, response_mask = a
    valid = response_mask.bool()
    assert bool((responses[~valid] == pad).all())
    # valid positions form a prefix, and nothing valid follows an eos
    assert bool((response_mask[:, 1:] <= response_mask[:, :-1]).all())
    lengths = response_mask.sum(1)
    for row, length in enumerate(lengths.tolist()):
        assert eos not in responses[row, : length - 1].tolist()


def test_bad_shapes_and_budgets_are_refused(policy):
    model, tokenizer = policy
    ids, mask = _prompts(tokenizer, 2)
    with pytest.raises(ValueError, match="attention_mask"):
        sampler.generate(model, ids, mask[:, 1:], 4, 0, 0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampler.generate(model, ids, mask, 0, 0, 0)
