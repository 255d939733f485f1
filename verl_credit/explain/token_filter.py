"""The high-entropy ("80/20") token filter in the explain report: which tokens it would drop.

    response_entropy(model, prompts, responses, temperature, width) -> FloatTensor[B, T]
    FilterSummary                      what the report shows: keep mask, tau, per-estimator rows.
    summarise(result, model) -> FilterSummary   the filter over the run's rollouts and every section.

The entropy is the explain run's own: one forward of prompt + response per rollout through the
model that sampled them, the logits divided by the sampling ``temperature`` (as verl's engine does
with ``rollout.temperature``), H_t = -sum_v p_v log p_v at every response position. The threshold
and the mask are :func:`verl_credit.core.token_filter.high_entropy_mask` over all the run's valid
tokens (the trainer takes it over the step batch), with ``credit.token_filter.entropy_quantile``
when set and the paper's 0.2 otherwise (what the filter would drop if it were on). The mask depends
on the policy and the tokens only, so it is the same for every estimator; what differs per
estimator is how much of its advantage lands on the kept tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from verl_credit.core.token_filter import high_entropy_mask, token_filter_metrics

__all__ = ["PAPER_QUANTILE", "FilterSummary", "response_entropy", "summarise"]

PAPER_QUANTILE = 0.2  # Wang et al., arXiv 2506.01939


def response_entropy(model, prompts, responses, temperature: float, width: int) -> torch.Tensor:
    """H[i, t]: entropy of the model's next-token distribution (logits / temperature) before response
    token t of rollout i; 0 past the response. prompts / responses: B 1-D LongTensors.

    Shape: -> FloatTensor[B, width] (width >= the longest response)."""
    out = torch.zeros(len(responses), width)
    with torch.no_grad():
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            P, R = prompt.numel(), response.numel()
            if R == 0:
                continue
            ids = torch.cat([prompt, response]).unsqueeze(0)
            logits = model(input_ids=ids).logits[0, P - 1 : P + R - 1].float() / temperature
            logp = F.log_softmax(logits, dim=-1)
            out[i, :R] = -(logp.exp() * logp).sum(-1)
    return out


@dataclass
class FilterSummary:
    """quantile q, whether the run's config set it (else the paper's 0.2), the sampling temperature;
    entropy FloatTensor[B, T] and keep BoolTensor[B, T] over the rollouts' valid tokens; tau; the
    entropy-only metrics; rows: per estimator (its main advantage view) the kept fraction of its
    tokens with A != 0 and its advantage mass on the kept tokens."""

    quantile: float
    configured: bool
    temperature: float
    entropy: torch.Tensor
    keep: torch.Tensor
    tau: float
    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "quantile": self.quantile,
            "configured": self.configured,
            "temperature": self.temperature,
            "threshold": self.tau,
            "metrics": self.metrics,
            "per_estimator": self.rows,
            "kept": [[bool(k) for k in row[: int(n)]] for row, n in zip(self.keep, self._lengths, strict=True)],
        }

    _lengths: list[int] = field(default_factory=list, repr=False)


def summarise(result, model) -> FilterSummary:
    """The filter over ``result``'s rollouts (an ``ExplainResult`` whose sections are built)."""
    from verl_credit.explain.compare import main_views

    ro, tok = result.rollouts, result.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    _, mask = ro.padded(pad)
    configured = result.credit.token_filter.entropy_quantile
    q = float(configured) if configured is not None else PAPER_QUANTILE
    entropy = response_entropy(model, ro.prompts, ro.responses, result.config.temperature, mask.shape[1])
    keep, tau = high_entropy_mask(entropy, mask, q)
    ones = torch.ones_like(entropy)  # the entropy-only metrics do not depend on the advantages
    base = token_filter_metrics(entropy, mask, keep, ones, tau)
    metrics = {k: v for k, v in base.items() if k != "advantage_mass_kept"}
    rows = []
    for key, view in main_views(result.sections):
        if view.scale != "advantage":  # e.g. the length reward's significance: not an advantage
            continue
        adv = view.values.float()
        credited = mask.bool() & (adv != 0)
        m = token_filter_metrics(entropy, mask, keep, adv, tau)
        rows.append(
            {
                "estimator": key,
                "view": view.title,
                "kept_fraction": m["kept_fraction"],
                "kept_fraction_of_credited": float((keep & credited).sum()) / int(credited.sum())
                if bool(credited.any())
                else float("nan"),
                "advantage_mass_kept": m["advantage_mass_kept"],
            }
        )
    return FilterSummary(
        quantile=q,
        configured=configured is not None,
        temperature=float(result.config.temperature),
        entropy=entropy,
        keep=keep,
        tau=float(tau),
        metrics=metrics,
        rows=rows,
        _lengths=[int(n) for n in mask.sum(1)],
    )
