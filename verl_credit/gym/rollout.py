"""Sampling, grading and credit for the gym, calling the estimators as the verl integration does.

Public API:
    Method, parse_method        -- the method grammar (``gym.methods``), re-exported.
    Rollouts                    -- a sampled batch (B = prompts x G rows) with labels and rewards.
    sample(model, tokenizer, problems, G, max_new_tokens, seed) -> Rollouts
    evaluate(model, tokenizer, problems, max_new_tokens) -> greedy accuracy
    evaluate_sampled(model, tokenizer, problems, k, max_new_tokens, seed) -> pass@1 at temperature 1
    evaluate_stats(model, tokenizer, problems, k, max_new_tokens, seed) -> EvalStats (accuracy and
                                   mean response lengths; k=None: greedy)
    estimate(method, rollouts, model, tokenizer, config, step, old_log_probs, stats, ref_log_probs) -> CreditOutput
    credit_batch(r, fields, old_log_probs) -> CreditBatch

Decoding (training samples and held-out evaluation) is ``gym.sampler.generate``: transformers' forward
and KV cache, finished rows dropped, the same tokens as ``model.generate`` when greedy.

``estimate`` follows ``integration/tq_batch.compute_plugin_advantage`` and
``integration/scoring_stage.run_scoring_stage`` without TransferQueue or Ray: the same
``CreditBatch`` (outcome reward on the last valid token, one uid per prompt), the same
``EstimatorContext`` (special ids = pad and eos), ``registry.compute_advantages``; the scoring stage
through ``scoring.score_spans`` / ``scoring.score_reference`` with ``scoring.hf_scorer`` (rows of
groups whose outcome advantages are not all zero for the counterfactual product, every rollout of a
group of two or more for the reference product), then ``weighting.apply_counterfactual_weights``.
GRPO is ``estimators.GRPO_SPEC`` (verl's own numbers). ``oracle`` / ``anti_oracle`` are gym methods,
not estimators: GRPO's z times ground-truth token weights read off the task's labels (``gym.oracle``).
``rloo`` / ``optimal_token_baseline`` are verl's own estimators; the entropy filter and ``+m1`` follow
any estimator (``gym.compose``). An estimator gets the fields it declares as the trainer passes them
(``compose.trainer_fields``: prompts, rollout_log_probs, ref_log_prob; old_log_probs on the batch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from verl_credit.batch import CreditBatch, CreditOutput, EstimatorContext, special_token_ids
from verl_credit.config import CreditConfig
from verl_credit.core.groups import contrast_rows, multi_rollout_rows
from verl_credit.estimators import GRPO_SPEC, REFERENCE_FIELDS
from verl_credit.gym.compose import apply_entropy_filter, apply_mean1, trainer_fields, verl_advantages
from verl_credit.gym.methods import VERL_ESTIMATORS, Method, parse_method
from verl_credit.gym.model import OldStats, response_stats
from verl_credit.gym.oracle import oracle_advantages
from verl_credit.gym.sampler import generate
from verl_credit.gym.task import Problem, grade, token_labels
from verl_credit.registry import compute_advantages, get_estimator
from verl_credit.scoring import hf_scorer, reference_answer, score_reference, score_spans
from verl_credit.weighting import STAGE_FIELDS, apply_counterfactual_weights

__all__ = [
    "Method",
    "parse_method",
    "Rollouts",
    "EvalStats",
    "sample",
    "evaluate",
    "evaluate_sampled",
    "evaluate_stats",
    "estimate",
]


@dataclass
class Rollouts:
    """A sampled batch. Notation: B = prompts x G rows, P prompt width, T response width.

    prompt_ids / prompt_mask: (B, P) left-padded; responses / response_mask: (B, T) right-padded
    (the eos token, when sampled, is a valid response token); rewards: (B,) 0/1; labels: (B, T)
    token labels (``task.LABELS``, FORMAT at padding); uids: B group ids; problems: B problems.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    responses: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    labels: torch.Tensor
    uids: list[str]
    problems: list[Problem]

    def select(self, rows: torch.Tensor) -> Rollouts:
        r = rows.tolist()
        return Rollouts(
            self.prompt_ids[rows],
            self.prompt_mask[rows],
            self.responses[rows],
            self.response_mask[rows],
            self.rewards[rows],
            self.labels[rows],
            [self.uids[i] for i in r],
            [self.problems[i] for i in r],
        )

    def valid(self, which: str, row: int) -> torch.Tensor:
        """1-D valid ids of ``which`` ("prompt" or "response") of one row."""
        if which == "prompt":
            return self.prompt_ids[row][self.prompt_mask[row].bool()]
        return self.responses[row][self.response_mask[row].bool()]


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, greedy: bool):
    """Left-padded prompt ids and mask [B, P], responses and response mask [B, T] (``gym.sampler``)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    responses, mask = generate(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        greedy,
    )
    return enc["input_ids"], enc["attention_mask"], responses, mask


@torch.no_grad()
def sample(model, tokenizer, problems: list[Problem], G: int, max_new_tokens: int, seed: int, labels: bool = True):
    """G samples (temperature 1, no top-k/top-p) per problem, graded and (``labels``) labelled -> Rollouts."""
    torch.manual_seed(seed)
    rows = [p for p in problems for _ in range(G)]
    prompt_ids, prompt_mask, responses, mask = _generate(
        model, tokenizer, [p.prompt for p in rows], max_new_tokens, False
    )
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    rewards = torch.tensor([grade(t, p) for t, p in zip(texts, rows, strict=True)])
    token_label = torch.full(responses.shape, 3, dtype=torch.long)
    for i in range(len(rows) if labels else 0):
        n = int(mask[i].sum())
        token_label[i, :n] = token_labels(tokenizer, responses[i, :n].tolist())
    uids = [f"p{k // G}" for k in range(len(rows))]
    return Rollouts(prompt_ids, prompt_mask, responses, mask, rewards, token_label, uids, rows)


@dataclass(frozen=True)
class EvalStats:
    """accuracy: mean 0/1 reward; length: mean response length in tokens (the eos included when
    sampled); length_correct: the same over the correct responses (NaN when none is correct)."""

    accuracy: float
    length: float
    length_correct: float


@torch.no_grad()
def evaluate_stats(
    model,
    tokenizer,
    problems: list[Problem],
    k: int | None = 4,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch: int = 128,
) -> EvalStats:
    """Accuracy and mean response lengths on ``problems``: ``k`` samples per problem at temperature 1
    (fixed ``seed``), or greedy decoding (one response per problem) when ``k`` is None."""
    rewards, lengths = [], []
    if k is None:
        for start in range(0, len(problems), batch):
            chunk = problems[start : start + batch]
            *_, responses, mask = _generate(model, tokenizer, [p.prompt for p in chunk], max_new_tokens, True)
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            rewards.append(torch.tensor([grade(t, p) for t, p in zip(texts, chunk, strict=True)]))
            lengths.append(mask.sum(1))
    else:
        r = sample(model, tokenizer, problems, k, max_new_tokens, seed=seed, labels=False)
        rewards.append(r.rewards)
        lengths.append(r.response_mask.sum(1))
    if not problems:
        return EvalStats(0.0, float("nan"), float("nan"))
    reward = torch.cat(rewards).double()
    length = torch.cat(lengths).double()
    correct = reward > 0
    length_correct = float(length[correct].mean()) if bool(correct.any()) else float("nan")
    return EvalStats(float(reward.mean()), float(length.mean()), length_correct)


def evaluate(model, tokenizer, problems: list[Problem], max_new_tokens: int = 48, batch: int = 128) -> float:
    """Greedy accuracy on ``problems``; see :func:`evaluate_sampled` for pass@1 at temperature 1."""
    return evaluate_stats(model, tokenizer, problems, None, max_new_tokens, batch=batch).accuracy


def evaluate_sampled(model, tokenizer, problems: list[Problem], k: int = 4, max_new_tokens: int = 48, seed: int = 0):
    """Mean reward of k samples (temperature 1) per problem, fixed seed: the quantity RL optimises."""
    return evaluate_stats(model, tokenizer, problems, k, max_new_tokens, seed=seed).accuracy


def credit_batch(r: Rollouts, fields: dict | None = None, old_log_probs=None) -> CreditBatch:
    """The CreditBatch the plugin trainer builds: reward on the last valid token."""
    return CreditBatch.from_outcomes(
        r.responses, r.response_mask, r.rewards, r.uids, old_log_probs=old_log_probs, fields=dict(fields or {})
    )


def context(tokenizer, config: CreditConfig, step: int = 0) -> EstimatorContext:
    return EstimatorContext(
        config=config,
        norm_adv_by_std=True,
        special_token_ids=special_token_ids(tokenizer),
        global_step=step,
    )


def estimate(
    method: Method,
    r: Rollouts,
    model,
    tokenizer,
    config: CreditConfig,
    step: int = 0,
    old_log_probs=None,
    stats: OldStats | None = None,
    ref_log_probs=None,
) -> CreditOutput:
    """Advantages (B, T) of ``method`` on ``r``, stage products computed with ``model`` (no grad).

    old_log_probs (B, T), or ``stats`` (``model.OldStats``: log-probs, entropy, sum pi^2 of the old
    forward; computed here with ``model`` when the method needs them and none are given);
    ref_log_probs (B, T): the reference policy's, for an estimator declaring ``ref_log_prob``.
    Order: the estimator (with counterfactual weights), the entropy filter, the mean-1 rescaling.
    """
    mask = r.response_mask
    needs_stats = method.entropy_quantile is not None or method.estimator == "optimal_token_baseline"
    if stats is None and needs_stats:
        with torch.no_grad():
            stats = response_stats(model, r.prompt_ids, r.prompt_mask, r.responses, mask)
    if stats is not None and old_log_probs is None:
        old_log_probs = stats.log_probs
    out = _base_estimate(method, r, model, tokenizer, config, step, old_log_probs, stats, ref_log_probs)
    if method.entropy_quantile is not None:
        out = apply_entropy_filter(out, stats.entropy, mask, method.entropy_quantile, method.entropy_denominator)
    if method.mean1:
        out = apply_mean1(out, mask, method.label)
    return out


def _base_estimate(method, r, model, tokenizer, config, step, old_log_probs, stats, ref_log_probs) -> CreditOutput:
    """The method's estimator alone (no filter, no rescaling)."""
    cf = None
    if method.estimator == "counterfactual":  # the method's mode is the run's, as in a trainer config
        cf = dataclasses.replace(config.counterfactual, mode=method.cf_mode)
        config = dataclasses.replace(config, counterfactual=cf)
    ctx = context(tokenizer, config, step)
    if method.oracle is not None:
        z = compute_advantages(GRPO_SPEC, credit_batch(r, old_log_probs=old_log_probs), ctx).advantages
        adv, w = oracle_advantages(
            method.oracle, method.estimator == "anti_oracle", r, tokenizer, z, config.correct_threshold
        )
        return CreditOutput(advantages=adv, token_weights=w)
    if method.estimator in VERL_ESTIMATORS:
        pi2 = stats.sum_pi_squared if stats is not None else None
        return verl_advantages(method.estimator, credit_batch(r), old_log_probs, pi2)
    spec = GRPO_SPEC if method.estimator == "grpo" else get_estimator(method.estimator)
    fields = trainer_fields(spec.fields, r, old_log_probs, ref_log_probs)
    batch = credit_batch(r, fields=fields, old_log_probs=old_log_probs)
    B = r.responses.shape[0]
    prompts = [r.valid("prompt", i) for i in range(B)]
    responses = [r.valid("response", i) for i in range(B)]
    score_fn = hf_scorer(model, tokenizer.pad_token_id)
    if cf is not None:
        if cf.mode != "uniform":
            rows = contrast_rows(batch.scores, batch.groups).nonzero().flatten().tolist()
            res = score_spans(tokenizer, score_fn, prompts, responses, cf, rows=rows)
            batch.fields.update(zip(STAGE_FIELDS, (res.scores, res.spans, res.answer), strict=True))
    if "reference" in spec.stage:
        template = config.variance.answer_template
        refs, marks = zip(*[reference_answer(tokenizer, template, p.answer) for p in r.problems], strict=True)
        rows = multi_rollout_rows(batch.groups).nonzero().flatten().tolist()
        logprobs, mask, _ = score_reference(
            tokenizer, score_fn, prompts, responses, refs, rows, config.counterfactual, answer_masks=marks
        )
        batch.fields.update(zip(REFERENCE_FIELDS, (logprobs, mask), strict=True))
    out = compute_advantages(spec, batch, ctx)
    if cf is not None:
        out = apply_counterfactual_weights(out, batch, cf, step)
    return out
