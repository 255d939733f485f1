"""Build span-masked variants of rollouts and score answer tokens with a causal LM (no grad).

Public API:
    CounterfactualConfig     -- the ``credit.counterfactual`` block (span, weight and scoring options).
    VariantBatch             -- sequences to score, their target ranges, and which rollout/span each is.
    build_variants(...)      -- original + one variant per span for each rollout to score.
    HFScorer / hf_scorer(model, ...) -- a score function for any Hugging Face causal LM (CPU demo, tests).
    SpanScores               -- per-rollout scores (B, S+1), spans (B, S, 2), answer (B, 2), costs.
    score_spans(...)         -- spans + variants + scoring + bookkeeping, for a batch of rollouts.
    reference_answer(...)    -- a reference answer's ids and which of them are the answer (not the template).
    score_reference(...)     -- per-token log-probs of a reference answer after each rollout's reasoning.

A score function maps ``(sequences: list[LongTensor], targets: LongTensor[V, 2], groups:
LongTensor[V] | None)`` to a list of V float tensors: log pi(x_t | x_<t) for t in
[targets[v, 0], targets[v, 1]) of sequence v. ``groups`` (``credit.counterfactual.scoring=tree``:
the rollout of each variant) lets it score a rollout's original and variants in one tree-shaped
forward (``verl_credit.tree``); None asks for one forward per sequence. A scorer that counts what it
ran exposes ``forward_tokens`` (a running total); for plain functions the sequences' lengths are
counted. The actor worker's scorers run verl's engine / the FSDP module (``integration/worker.py``);
:class:`HFScorer` runs a plain transformers model. Both see the same variants and the same trees.

Work avoided (reported in ``SpanScores``): rollouts not asked for (e.g. groups whose outcome
advantages are all zero) are not scored; identical (prompt, response) pairs are scored once;
every sequence is cut after its last target token; a variant's prefix shared with its original is
computed once (tree scoring); sequences are grouped by length so padding stays small.
``naive_tokens`` is the cost without any of this: (1 + K) forwards of the full prompt + response
for every requested rollout that has something to score (an answer, or a gold answer).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from verl_credit.core.checks import is_int
from verl_credit.core.counterfactual import WeightParams
from verl_credit.spans import ResponseSpans, SpanParams, find_spans
from verl_credit.tree import (
    TREE_ATTENTION,
    attention_implementation,
    build_trees,
    forward_trees,
    kv_cache_logprobs,
    pack_rows,
)

__all__ = [
    "CounterfactualConfig",
    "VariantBatch",
    "build_variants",
    "duplicate_rows",
    "answer_ids",
    "answer_text",
    "reference_answer",
    "HFScorer",
    "hf_scorer",
    "SCORING_MODES",
    "SpanScores",
    "score_spans",
    "score_reference",
]

ScoreFn = Callable[..., list[torch.Tensor]]  # (sequences, targets, groups=None) -> list of V tensors
SCORING_MODES = ("tree", "naive")


@dataclass
class CounterfactualConfig(SpanParams, WeightParams):
    """``credit.counterfactual``: spans (SpanParams), weights (WeightParams) and scoring options.

    Attributes (besides the inherited ones):
        answer_source: "own" scores the rollout's own answer tokens; "gold" teacher-forces the
            reference answer (``reward_model.ground_truth`` rendered by ``gold_template``) after
            the reasoning. Default "own".
        gold_template: how a reference answer is written after the reasoning. Default "#### {answer}".
        placeholder_token_id: token written over a masked span; None = the tokenizer's pad id,
            else its eos id.
        scoring: "tree" (default) scores a rollout's original and its K variants in tree-shaped
            forwards that compute the shared prefix once (``verl_credit.tree``; same numbers as
            "naive" within float error); "naive" forwards each of the 1 + K sequences in full.
        max_batch_tokens: token budget of one scoring forward (rows x width, padding included), on
            the transformers path and for the workers' tree forwards; a tree row is at most this
            long (a group that does not fit is cut into several rows), so a forward's attention
            mask has at most max_batch_tokens^2 entries. Default 4096. The workers' naive path
            uses verl's own micro-batching (``log_prob_micro_batch_size_per_gpu`` /
            ``log_prob_max_token_len_per_gpu``).
    """

    answer_source: str = "own"
    gold_template: str = "#### {answer}"
    placeholder_token_id: int | None = None
    scoring: str = "tree"
    max_batch_tokens: int = 4096

    def __post_init__(self):
        SpanParams.__post_init__(self)
        WeightParams.__post_init__(self)
        if self.answer_source not in ("own", "gold"):
            raise ValueError(f"credit.counterfactual.answer_source must be 'own' or 'gold', got {self.answer_source!r}")
        if self.scoring not in SCORING_MODES:
            raise ValueError(
                f"credit.counterfactual.scoring must be one of {', '.join(SCORING_MODES)}, got {self.scoring!r}"
            )
        if "{answer}" not in self.gold_template:
            raise ValueError("credit.counterfactual.gold_template must contain '{answer}'")
        if self.placeholder_token_id is not None and not (
            is_int(self.placeholder_token_id) and self.placeholder_token_id >= 0
        ):
            raise ValueError(
                "credit.counterfactual.placeholder_token_id must be null or a token id >= 0, got "
                f"{self.placeholder_token_id!r}"
            )
        if not (is_int(self.max_batch_tokens) and self.max_batch_tokens >= 16):
            raise ValueError(
                f"credit.counterfactual.max_batch_tokens must be an integer >= 16, got {self.max_batch_tokens!r}"
            )


@dataclass
class VariantBatch:
    """sequences: V LongTensors (prompt + reasoning variant + answer, cut after the answer);
    targets: LongTensor[V, 2] scored positions [start, end) in each sequence; rows: LongTensor[V]
    rollout of each variant; spans: LongTensor[V] masked span index, -1 for the original."""

    sequences: list[torch.Tensor]
    targets: torch.Tensor
    rows: torch.Tensor
    spans: torch.Tensor

    @property
    def forward_tokens(self) -> int:
        return int(sum(s.numel() for s in self.sequences))


def answer_ids(tokenizer, template: str, answer) -> torch.Tensor:
    """LongTensor of ``template`` with ``{answer}`` filled in, tokenized without special tokens
    (how a reference answer is teacher-forced after the reasoning, on the workers and on CPU)."""
    return torch.tensor(
        tokenizer(template.format(answer=answer_text(answer)), add_special_tokens=False)["input_ids"], dtype=torch.long
    )


def answer_text(answer) -> str:
    """A ground truth as the text that is teacher-forced: a string unchanged, an integer-valued number
    as an integer (43.0 -> "43", as the data would write it), another number with ``str``.
    ValueError for None, NaN or inf (there is no answer to write)."""
    if isinstance(answer, str):
        return answer
    if answer is None or (isinstance(answer, float) and not math.isfinite(answer)):
        raise ValueError(f"reward_model.ground_truth is {answer!r}: no reference answer to teacher-force")
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return str(answer)


def reference_answer(tokenizer, template: str, answer) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, is_answer): the ids of :func:`answer_ids` (LongTensor[J]) and BoolTensor[J], True on
    the tokens that hold a character of ``answer`` itself, False on the template written around it
    ("#### " of "#### {answer}"): the template is context, teacher-forced but not scored by R3.

    A token that straddles the template and the answer (" 42" after "####" in a GPT-2 style BPE)
    holds answer characters and counts as the answer's. Character offsets come from a fast
    tokenizer's offset mapping, else from decoding growing prefixes of the ids.
    """
    text, spans = _render(template, answer)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ends = [len(tokenizer.decode(ids[:k])) for k in range(len(ids) + 1)]
        offsets = list(zip(ends[:-1], ends[1:], strict=True))
    is_answer = [any(t0 < a1 and a0 < t1 for a0, a1 in spans) for t0, t1 in offsets]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(is_answer, dtype=torch.bool).reshape(-1)


def _render(template: str, answer) -> tuple[str, list[tuple[int, int]]]:
    """``template.format(answer=answer_text(answer))`` and the character ranges [start, end) of each ``{answer}``."""
    answer = answer_text(answer)
    text, spans = "", []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        text += literal
        if name is not None:
            field = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            value = field.format(answer=answer)
            spans.append((len(text), len(text) + len(value)))
            text += value
    return text, spans


def duplicate_rows(
    prompts: Sequence[torch.Tensor],
    responses: Sequence[torch.Tensor],
    rows: Sequence[int],
    extra: Sequence[torch.Tensor] | None = None,
) -> tuple[list[int], dict[int, int]]:
    """(rows to score, {duplicate row: the earlier row it equals}) for identical (prompt, response
    [, extra]) rows, so each distinct sequence is scored once. Inputs: 1-D LongTensors, valid tokens only."""
    first_of: dict[tuple, int] = {}
    unique, copies = [], {}
    for row in rows:
        key = (tuple(prompts[row].tolist()), tuple(responses[row].tolist()))
        if extra is not None:
            key += (tuple(extra[row].tolist()),)
        source = first_of.setdefault(key, row)
        if source == row:
            unique.append(row)
        else:
            copies[row] = source
    return unique, copies


def build_variants(
    prompts: Sequence[torch.Tensor],
    responses: Sequence[torch.Tensor],
    spans: Sequence[ResponseSpans],
    rows: Sequence[int],
    placeholder_id: int,
    gold_answers: Sequence[torch.Tensor] | None = None,
    with_spans: bool = True,
) -> VariantBatch:
    """Original and span-masked sequences of ``rows`` (rollouts without a target are skipped).

    own answer (gold_answers None): sequence = prompt + response[:answer_end], target = answer.
    gold: sequence = prompt + response[:reasoning_end] + gold, target = the gold tokens.
    Variant k overwrites response tokens [s_k, e_k) with ``placeholder_id`` (length unchanged);
    ``with_spans=False`` builds the originals only.
    """
    seqs, targets, row_ids, span_ids = [], [], [], []
    for row in rows:
        sp, prompt, response = spans[row], prompts[row].long(), responses[row].long()
        P = prompt.numel()
        if gold_answers is None:
            if sp.answer is None:
                continue
            base = torch.cat([prompt, response[: sp.answer[1]]])
            target = (P + sp.answer[0], P + sp.answer[1])
        else:
            gold = gold_answers[row].long()
            if gold.numel() == 0:
                continue
            base = torch.cat([prompt, response[: sp.reasoning_end], gold])
            target = (P + sp.reasoning_end, P + sp.reasoning_end + gold.numel())
        for k, (s0, s1) in enumerate([(-1, -1), *(sp.spans if with_spans else [])]):
            seq = base.clone()
            if k > 0:
                seq[P + s0 : P + s1] = placeholder_id
            seqs.append(seq)
            targets.append(target)
            row_ids.append(row)
            span_ids.append(k - 1)
    return VariantBatch(
        sequences=seqs,
        targets=torch.tensor(targets, dtype=torch.long).reshape(-1, 2),
        rows=torch.tensor(row_ids, dtype=torch.long),
        spans=torch.tensor(span_ids, dtype=torch.long),
    )


class HFScorer:
    """Score function over a transformers causal LM (no grad, fp32 log-softmax).

    ``groups`` None: length-sorted, right-padded micro-batches of whole sequences (naive).
    ``groups`` given: tree rows (:func:`verl_credit.tree.build_trees`, at most ``max_batch_tokens``
    tokens each) packed into forwards of at most ``max_batch_tokens`` tokens, with a 4D mask when
    the model's attention takes one (sdpa, eager), else through a KV cache
    (:func:`verl_credit.tree.kv_cache_logprobs`). ``forward_tokens``: tokens run so far, padding excluded.
    """

    def __init__(self, model, pad_id: int, max_batch_tokens: int = 4096, temperature: float = 1.0):
        self.model, self.pad_id, self.max_batch_tokens, self.temperature = model, pad_id, max_batch_tokens, temperature
        self.forward_tokens = 0

    def __call__(self, sequences, targets, groups=None) -> list[torch.Tensor]:
        targets = targets.reshape(-1, 2)
        if not sequences:
            return []
        if groups is None:
            self.forward_tokens += sum(int(s.numel()) for s in sequences)
            return self._naive(sequences, targets)
        if attention_implementation(self.model) not in TREE_ATTENTION:
            self.forward_tokens += sum(t.num_tokens for t in build_trees(sequences, targets, groups))
            return kv_cache_logprobs(self.model, sequences, targets, groups, self.temperature)
        trees = build_trees(sequences, targets, groups, self.max_batch_tokens)
        self.forward_tokens += sum(t.num_tokens for t in trees)
        out: dict[int, torch.Tensor] = {}
        for batch in pack_rows(trees, self.max_batch_tokens):
            out.update(forward_trees(self.model, [trees[i] for i in batch], self.pad_id, self.temperature))
        return [out[v] for v in range(len(sequences))]

    @torch.no_grad()
    def _naive(self, sequences, targets) -> list[torch.Tensor]:
        model = self.model
        out: list[torch.Tensor | None] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda v: -sequences[v].numel())
        device = next(model.parameters()).device
        i = 0
        while i < len(order):
            width = sequences[order[i]].numel()
            count = max(1, self.max_batch_tokens // max(width, 1))
            chunk = order[i : i + count]
            i += count
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, v in enumerate(chunk):
                n = sequences[v].numel()
                ids[j, :n], attn[j, :n] = sequences[v], 1
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
            for j, v in enumerate(chunk):
                t0, t1 = int(targets[v, 0]), int(targets[v, 1])
                logp = torch.log_softmax(logits[j, t0 - 1 : t1 - 1] / self.temperature, dim=-1)
                out[v] = logp.gather(1, sequences[v][t0:t1].to(device).unsqueeze(1)).squeeze(1).cpu()
        return out  # type: ignore[return-value]


def hf_scorer(model, pad_id: int, max_batch_tokens: int = 4096) -> HFScorer:
    """:class:`HFScorer` for a transformers causal LM (kept as the documented entry point)."""
    return HFScorer(model, pad_id, max_batch_tokens)


def _run_scorer(score_fn: ScoreFn, variants: VariantBatch, tree: bool) -> tuple[list[torch.Tensor], int]:
    """(token log-probs, tokens the scorer ran) for ``variants``; trees grouped by rollout when ``tree``."""
    before = getattr(score_fn, "forward_tokens", None)
    if tree:
        token_logprobs = score_fn(variants.sequences, variants.targets, variants.rows)
    else:
        token_logprobs = score_fn(variants.sequences, variants.targets)
    after = getattr(score_fn, "forward_tokens", None)
    used = after - before if isinstance(before, int) and isinstance(after, int) else variants.forward_tokens
    return token_logprobs, int(used)


@dataclass
class SpanScores:
    """Per-rollout results of the counterfactual stage.

    scores: FloatTensor[B, S+1]; column 0 = S(r), column k = S(r without span k); NaN when absent.
    spans: LongTensor[B, S, 2] token ranges (-1 absent); answer: LongTensor[B, 2] (-1 absent).
    kinds: per rollout, the kind of each span. scored: BoolTensor[B] rollouts that got scores.
    forward_tokens / naive_tokens: tokens the stage ran vs (1 + K) full forwards per rollout.
    """

    scores: torch.Tensor
    spans: torch.Tensor
    answer: torch.Tensor
    kinds: list[list[str]]
    scored: torch.Tensor
    forward_tokens: int
    naive_tokens: int


def score_spans(
    tokenizer,
    score_fn: ScoreFn,
    prompts: Sequence[torch.Tensor],
    responses: Sequence[torch.Tensor],
    config: CounterfactualConfig,
    rows: Sequence[int] | None = None,
    gold_answers: Sequence[torch.Tensor] | None = None,
    spans: Sequence[ResponseSpans] | None = None,
) -> SpanScores:
    """Find spans of every rollout (or take ``spans`` already found with ``config``), score the
    original and each span-masked variant of ``rows`` (default: all), with identical
    (prompt, response) pairs scored once.

    Shapes: prompts / responses: B 1-D LongTensors (valid tokens only) -> SpanScores (B rows).
    """
    B, S = len(responses), config.max_spans
    rows = list(range(B)) if rows is None else [int(r) for r in rows]
    if spans is None:
        spans = find_spans(tokenizer, [r.tolist() for r in responses], config)
    unique_rows, copy_from = duplicate_rows(prompts, responses, rows, gold_answers)
    placeholder = _placeholder(tokenizer, config)
    variants = build_variants(prompts, responses, spans, unique_rows, placeholder, gold_answers)
    scores = torch.full((B, S + 1), math.nan)
    # called even when empty (dp collectives)
    token_logprobs, forward_tokens = _run_scorer(score_fn, variants, config.scoring == "tree")
    if variants.sequences:
        sums = torch.stack([lp.double().sum() for lp in token_logprobs]).float()
        scores[variants.rows, variants.spans + 1] = sums
    for row, source in copy_from.items():
        scores[row] = scores[source]
    span_t = torch.full((B, S, 2), -1, dtype=torch.long)
    answer_t = torch.full((B, 2), -1, dtype=torch.long)
    for i, sp in enumerate(spans):
        if sp.spans:
            span_t[i, : len(sp.spans)] = torch.tensor(sp.spans, dtype=torch.long)
        if sp.answer is not None:
            answer_t[i] = torch.tensor(sp.answer)
    scored_rows = set(variants.rows.tolist())
    has_target = scored_rows | {row for row, source in copy_from.items() if source in scored_rows}
    naive = sum(
        (1 + len(spans[r].spans)) * (prompts[r].numel() + responses[r].numel()) for r in rows if r in has_target
    )
    return SpanScores(
        scores=scores,
        spans=span_t,
        answer=answer_t,
        kinds=[sp.kinds for sp in spans],
        scored=~torch.isnan(scores[:, 0]),
        forward_tokens=forward_tokens,
        naive_tokens=int(naive),
    )


def _placeholder(tokenizer, config: CounterfactualConfig) -> int:
    if config.placeholder_token_id is not None:
        return int(config.placeholder_token_id)
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    raise ValueError("credit.counterfactual.placeholder_token_id is unset and the tokenizer has no pad or eos id")


def score_reference(
    tokenizer,
    score_fn: ScoreFn,
    prompts: Sequence[torch.Tensor],
    responses: Sequence[torch.Tensor],
    references: Sequence[torch.Tensor],
    rows: Sequence[int],
    params: SpanParams | None = None,
    spans: Sequence[ResponseSpans] | None = None,
    answer_masks: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """l_ij = log pi(y_j | prompt, reasoning_i, y_<j): each rollout's reasoning (its own answer
    removed, with the same answer detection as the spans: pass the run's span settings as
    ``params``, e.g. ``credit.counterfactual``, or the ``spans`` already found with them)
    followed by its reference answer ids.

    ``answer_masks`` (per row a BoolTensor over its reference's tokens, from
    :func:`reference_answer`): the positions that enter ``mask``: the answer's own tokens. Every
    reference token is teacher-forced and gets its log-prob; only the marked ones are scored.
    None marks every reference token.

    Shapes: B prompts / responses / references (1-D LongTensors) -> (logprobs (B, J) float,
    mask (B, J) long, forward tokens); rows not in ``rows`` have an all-zero mask. Identical
    (prompt, response, reference) triples are scored once.
    """
    B = len(responses)
    for row in rows if answer_masks is not None else ():
        if answer_masks[row].numel() != references[row].numel():
            raise ValueError(
                f"rollout {row}: its answer mask has {answer_masks[row].numel()} entries for a reference answer of "
                f"{references[row].numel()} tokens"
            )
    if spans is None:
        spans = find_spans(tokenizer, [r.tolist() for r in responses], params or SpanParams())
    unique, copy_from = duplicate_rows(prompts, responses, rows, references)
    copies = {**{row: row for row in unique}, **copy_from}
    variants = build_variants(prompts, responses, spans, unique, 0, references, with_spans=False)
    token_logprobs, forward_tokens = _run_scorer(score_fn, variants, tree=False)  # called even when empty (dp)
    J = max((int(references[r].numel()) for r in rows), default=0)
    logprobs, mask = torch.zeros(B, J), torch.zeros(B, J, dtype=torch.long)
    by_row = {int(r): lp for r, lp in zip(variants.rows.tolist(), token_logprobs, strict=True)}
    for row, source in copies.items():
        if source in by_row:
            n = by_row[source].numel()
            logprobs[row, :n] = by_row[source]
            mask[row, :n] = 1 if answer_masks is None else answer_masks[row].reshape(-1)[:n].long()
    return logprobs, mask, forward_tokens
