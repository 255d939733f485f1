"""Sampling, grading and credit for the gym, calling the estimators as the verl integration does.

Public API:
    Method                      -- one gym entry: estimator name, counterfactual mode, batching options.
    parse_method(text)          -- "ktae", "counterfactual:random", "grpo+qp", "grpo+rb", "grpo+lr",
                                   "grpo+lr:group", "my_estimator", "oracle", "anti_oracle:mask".
    Rollouts                    -- a sampled batch (B = prompts x G rows) with labels and rewards.
    sample(model, tokenizer, problems, G, max_new_tokens, seed) -> Rollouts
    evaluate(model, tokenizer, problems, max_new_tokens) -> greedy accuracy
    evaluate_sampled(model, tokenizer, problems, k, max_new_tokens, seed) -> pass@1 at temperature 1
    evaluate_stats(model, tokenizer, problems, k, max_new_tokens, seed) -> EvalStats (accuracy and
                                   mean response lengths; k=None: greedy)
    estimate(method, rollouts, model, tokenizer, config, step) -> CreditOutput

``estimate`` follows ``integration/tq_batch.compute_plugin_advantage`` and
``integration/scoring_stage.run_scoring_stage`` without TransferQueue or Ray: the same
``CreditBatch`` (outcome reward on the last valid token, one uid per prompt), the same
``EstimatorContext`` (special ids = pad and eos), ``registry.compute_advantages``; the scoring stage
through ``scoring.score_spans`` / ``scoring.score_reference`` with ``scoring.hf_scorer`` (rows of
groups whose outcome advantages are not all zero for the counterfactual product, every rollout of a
group of two or more for the reference product), then ``weighting.apply_counterfactual_weights``.
GRPO is ``estimators.GRPO_SPEC`` (verl's own numbers). ``oracle`` / ``anti_oracle`` are gym methods,
not estimators: GRPO's z times ground-truth token weights read off the task's labels (``gym.oracle``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from verl_credit.batch import CreditBatch, CreditOutput, EstimatorContext, special_token_ids
from verl_credit.config import CreditConfig
from verl_credit.core.groups import contrast_rows, multi_rollout_rows
from verl_credit.core.length_reward import ANCHORS
from verl_credit.estimators import GRPO_SPEC, REFERENCE_FIELDS
from verl_credit.gym.oracle import ORACLES, OracleSpec, oracle_advantages, parse_variant
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

BATCHING = ("qp", "rb")
LENGTH_REWARD = "lr"
OPTIONS = (*BATCHING, LENGTH_REWARD, *(f"{LENGTH_REWARD}:{a}" for a in ANCHORS))


@dataclass(frozen=True)
class Method:
    """label: as written by the user; estimator: registry name or "grpo"; cf_mode: the
    counterfactual mode (None unless estimator == "counterfactual"); query_preserved /
    reward_balanced: the batching options; length_reward: the length reward's anchor
    (``credit.length_reward.anchor``: "first_seen" or "group"), None without ``+lr`` (learning only);
    oracle: the weight variant of ``oracle`` / ``anti_oracle`` (``gym.oracle.OracleSpec``), else None."""

    label: str
    estimator: str
    cf_mode: str | None = None
    query_preserved: bool = False
    reward_balanced: bool = False
    length_reward: str | None = None
    oracle: OracleSpec | None = None


def parse_method(text: str) -> Method:
    """``name[:mode][+qp][+rb][+lr[:anchor]]``; ``name`` is "grpo" or a registered estimator
    (KeyError listing them otherwise); ``mode`` only for counterfactual
    (counterfactual|uniform|random|inverted); ``+lr`` shapes the reward with the length reward
    (Bingo), ``anchor`` = ``credit.length_reward.anchor`` (first_seen|group; default: the config's,
    first_seen). ``oracle[:variant]`` / ``anti_oracle[:variant]``: the ground-truth bounds, variant
    items ``mean1|mask|floorF|fmtF|clipC|persign`` (``gym.oracle``). ValueError naming the option
    otherwise; each option at most once."""
    head, *flags = text.split("+")
    known = ", ".join(OPTIONS)
    seen = set()
    anchor = None
    for flag in flags:
        option, colon, value = flag.partition(":")
        if option not in (*BATCHING, LENGTH_REWARD) or (colon and option != LENGTH_REWARD):
            raise ValueError(f"gym --estimators {text!r}: unknown method option {flag!r}; known: {known}")
        if option in seen:
            raise ValueError(f"gym --estimators {text!r}: option '+{option}' given twice")
        seen.add(option)
        if option == LENGTH_REWARD:
            default = CreditConfig().length_reward
            try:  # the config validates the anchor and names the option
                anchor = dataclasses.replace(default, anchor=value).anchor if colon else default.anchor
            except ValueError as err:
                raise ValueError(f"gym --estimators {text!r}: {err}") from None
    name, _, mode = head.partition(":")
    oracle = None
    if name in ORACLES:
        try:
            oracle = parse_variant(mode)
        except ValueError as err:
            raise ValueError(f"gym --estimators {text!r}: {err}") from None
        return Method(text, name, None, "qp" in seen, "rb" in seen, anchor, oracle)
    if name != "grpo":
        get_estimator(name)
    if mode and name != "counterfactual":
        raise ValueError(
            f"gym --estimators {text!r}: a ':mode' suffix is only for counterfactual, oracle and anti_oracle"
        )
    if name == "counterfactual":
        mode = mode or "counterfactual"
        CreditConfig().counterfactual.__class__(mode=mode)  # validates the mode
    return Method(text, name, mode or None, "qp" in seen, "rb" in seen, anchor)


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
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **enc,
        do_sample=not greedy,
        temperature=1.0 if not greedy else None,
        top_k=0 if not greedy else None,
        top_p=1.0 if not greedy else None,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    P = enc["input_ids"].shape[1]
    responses = out[:, P:]
    is_eos = responses == tokenizer.eos_token_id
    # valid through the first eos (inclusive); everything after it is padding
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    mask = (~after).long()
    responses = torch.where(mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
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
    method: Method, r: Rollouts, model, tokenizer, config: CreditConfig, step: int = 0, old_log_probs=None
) -> CreditOutput:
    """Advantages (B, T) of ``method`` on ``r``, stage products computed with ``model`` (no grad)."""
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
    spec = GRPO_SPEC if method.estimator == "grpo" else get_estimator(method.estimator)
    batch = credit_batch(r, old_log_probs=old_log_probs)
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
