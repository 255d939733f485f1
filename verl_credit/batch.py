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
        """The batch verl's trainer builds from outcome rewards: ``rewards[i]`` on the last valid
        token of rollout i (none for an empty response). Other keywords go to the constructor.

        Shapes: responses LongTensor[B, T] (any integer dtype), response_mask [B, T] of 0/1 (integer
        or bool), rewards [B] (float, integer or bool), uids B strings. A wrong shape, dtype or
        length is a ValueError naming the argument.
        """
        _check_tensor("responses", responses, dims=2, kinds=("integer",))
        B, T = responses.shape
        _check_tensor("response_mask", response_mask, dims=2, kinds=("integer", "bool"))
        if tuple(response_mask.shape) != (B, T):
            raise ValueError(
                f"response_mask has shape {tuple(response_mask.shape)}; expected {(B, T)}, the shape of responses"
            )
        if not bool(((response_mask == 0) | (response_mask == 1)).all()):
            raise ValueError("response_mask must hold only 0 and 1 (1 on valid response tokens)")
        _check_tensor("rewards", rewards, dims=1, kinds=("float", "integer", "bool"))
        if rewards.shape[0] != B:
            raise ValueError(
                f"rewards has {rewards.shape[0]} entries for {B} rollouts (responses has shape {(B, T)}): "
                "one outcome reward per rollout"
            )
        if uids is None or isinstance(uids, str) or len(uids) != B:
            got = "None" if uids is None else ("a string" if isinstance(uids, str) else f"{len(uids)} entries")
            raise ValueError(f"uids must hold one prompt-group id per rollout ({B}), got {got}")
        mask = response_mask.bool()
        positions = torch.arange(T).expand(B, T)
        last = torch.where(mask, positions, -1).amax(-1) if T else torch.full((B,), -1)
        token_rewards = torch.zeros((B, T), dtype=torch.float32)
        has = last >= 0
        token_rewards[has.nonzero().flatten(), last[has]] = rewards.float()[has]
        return cls(responses, response_mask, token_rewards, uids, **kwargs)

    def __post_init__(self):
        if self.responses.dim() != 2:
            raise ValueError(f"field 'responses' must be (B, T), got shape {tuple(self.responses.shape)}")
        if self.response_mask.shape != self.responses.shape:
            raise ValueError(
                f"field 'response_mask' has shape {tuple(self.response_mask.shape)}, "
                f"expected {tuple(self.responses.shape)} like 'responses'"
            )
        if self.token_level_rewards.shape != self.responses.shape:
            raise ValueError(
                f"field 'token_level_rewards' has shape {tuple(self.token_level_rewards.shape)}, "
                f"expected {tuple(self.responses.shape)} like 'responses' (CreditBatch.from_outcomes takes "
                "one reward per rollout)"
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


def _check_tensor(name: str, value, dims: int, kinds: tuple[str, ...]) -> None:
    """ValueError naming ``name`` unless ``value`` is a torch.Tensor with ``dims`` dimensions and a
    dtype of one of ``kinds`` ("integer", "float", "bool")."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__} (use torch.tensor(...))")
    if value.dim() != dims:
        shape = "(B, T)" if dims == 2 else "(B,)"
        raise ValueError(f"{name} must have {dims} dimension(s) {shape}, got shape {tuple(value.shape)}")
    dtype = value.dtype
    if dtype == torch.bool:
        kind = "bool"
    elif dtype.is_floating_point or dtype.is_complex:
        kind = "float" if dtype.is_floating_point else "complex"
    else:
        kind = "integer"
    if kind not in kinds:
        wanted = " or ".join(kinds)
        raise ValueError(f"{name} must have {'an' if wanted[0] in 'aeiou' else 'a'} {wanted} dtype, got {dtype}")


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
