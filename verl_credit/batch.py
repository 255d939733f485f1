"""What the trainer hands an estimator, and what an estimator hands back.

Public API:
    CreditBatch       -- one row per rollout: response ids, masks, rewards, uids, optional fields.
    EstimatorContext  -- run-level settings: the ``credit`` config, verl's GRPO normalisation,
                         the tokenizer's special ids, the training step.
    CreditOutput      -- token-level advantages (and optional returns, token weights, metrics).

Notation: B rollouts (rows, verl's padding rows included), T response positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from verl_credit.config import CreditConfig
from verl_credit.core.groups import GroupIndex, group_index_from_uids, sequence_scores

__all__ = ["CreditBatch", "CreditOutput", "EstimatorContext", "special_token_ids"]


def special_token_ids(tokenizer) -> tuple[int, ...]:
    """The tokenizer's pad and eos ids (those it has), sorted: KTAE's default ignore list."""
    ids = {getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)}
    return tuple(sorted(t for t in ids if isinstance(t, int)))


@dataclass
class CreditBatch:
    """Everything the trainer can give an estimator.

    Attributes:
        responses: LongTensor[B, T], response token ids, right-padded.
        response_mask: LongTensor[B, T], 1 on valid response tokens.
        token_level_rewards: FloatTensor[B, T], verl's ``rm_scores`` (outcome reward on the last
            valid token).
        uids: B prompt-group ids (verl ``uid``); ``pad*`` marks verl's padding rows.
        old_log_probs: FloatTensor[B, T] or None; present when the estimator declares the field.
        fields: any other per-row fields the estimator declared (name -> Tensor[B, ...]).
        groups: derived GroupIndex (group id per row, -1 for padding).
        scores: derived FloatTensor[B] outcome rewards, r_i = sum_t token_level_rewards[i, t],
            checked finite (ValueError naming the rollout otherwise).
    """

    responses: torch.Tensor
    response_mask: torch.Tensor
    token_level_rewards: torch.Tensor
    uids: Sequence[str]
    old_log_probs: torch.Tensor | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    groups: GroupIndex = field(init=False)
    scores: torch.Tensor = field(init=False)

    @classmethod
    def from_outcomes(
        cls, responses: torch.Tensor, response_mask: torch.Tensor, rewards: torch.Tensor, uids, **kwargs
    ) -> CreditBatch:
        """The batch verl's trainer builds from outcome rewards: ``rewards[i]`` (FloatTensor[B]) on the
        last valid token of rollout i (none for an empty response). Other keywords go to the constructor."""
        lengths = response_mask.sum(-1)
        last = (lengths - 1).clamp_min(0)
        token_rewards = torch.zeros(responses.shape, dtype=torch.float32)
        token_rewards[torch.arange(responses.shape[0]), last] = rewards.float() * (lengths > 0)
        return cls(responses, response_mask, token_rewards, uids, **kwargs)

    def __post_init__(self):
        if self.responses.dim() != 2:
            raise ValueError(f"field 'responses' must be (B, T), got shape {tuple(self.responses.shape)}")
        if self.response_mask.shape != self.responses.shape:
            raise ValueError(
                f"field 'response_mask' has shape {tuple(self.response_mask.shape)}, "
                f"expected {tuple(self.responses.shape)} like 'responses'"
            )
        if self.uids is None:
            raise ValueError("field 'uid' is missing: every rollout needs the uid of its prompt group")
        if len(self.uids) != self.responses.shape[0]:
            raise ValueError(f"field 'uid' has {len(self.uids)} entries for {self.responses.shape[0]} rollouts")
        self.uids = tuple(self.uids)
        self.groups = group_index_from_uids(self.uids)
        self.scores = sequence_scores(self.token_level_rewards, self.response_mask, self.uids)

    @property
    def batch_size(self) -> int:
        return self.responses.shape[0]


@dataclass(frozen=True)
class EstimatorContext:
    """Run-level settings an estimator may read.

    Attributes:
        config: the validated ``credit`` block.
        norm_adv_by_std: verl's ``algorithm.norm_adv_by_std_in_grpo`` (GRPO vs Dr.GRPO).
        special_token_ids: the tokenizer's pad and eos ids (KTAE's default ignore list).
        global_step: the trainer's step, for schedules.
    """

    config: CreditConfig = field(default_factory=CreditConfig)
    norm_adv_by_std: bool = True
    special_token_ids: tuple[int, ...] = ()
    global_step: int = 0


@dataclass
class CreditOutput:
    """An estimator's result.

    Attributes:
        advantages: FloatTensor[B, T]; the trainer zeroes masked positions and padding rows.
        returns: FloatTensor[B, T] or None (then ``returns = advantages``, as for GRPO).
        token_weights: FloatTensor[B, T] or None; per-token weights already folded into the
            advantages, kept for diagnostics.
        metrics: scalar metrics, logged as ``credit/<name>``; name them ``<quantity>/<stat>``.
        diagnostics: tensors for reports (e.g. KTAE's key-token values), not sent to verl.
    """

    advantages: torch.Tensor
    returns: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)
