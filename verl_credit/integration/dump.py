"""``AdvantageDumpMixin``: write what verl will train on, step by step (``VERL_CREDIT_DUMP_DIR``).

When the environment variable ``VERL_CREDIT_DUMP_DIR`` is set in the trainer's process
(``verl-credit smoke --dump DIR`` sets it), each step's ``_compute_advantage`` result is read back
from TransferQueue, exactly the rows and fields ``_update_actor`` will fetch, and saved as
``DIR/step_{global_steps}.pt`` (``torch.load(path, weights_only=True)``):

    uids: list[str] (B,)            is_padding: BoolTensor[B]  (verl's synthetic rows)
    prompts: LongTensor[B, P]       prompt_mask: LongTensor[B, P]  (left-aligned, 0-padded)
    responses: LongTensor[B, T]     response_mask, rm_scores, advantages, returns: [B, T]
    stage: {credit_* field: Tensor} the scoring stage's outputs, when it ran
    entropy: FloatTensor[B, T]      verl's per-token entropy of the old-log-prob forward (absent in
                                    bypass mode); the token filter's input

This is how the real-step tests check that the advantages verl trains on equal the estimator's
on the same rows. Off (no cost) when the variable is unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transfer_queue as tq
from transfer_queue import KVBatchMeta

from verl_credit.integration.tq_io import stage_tensors, uid_column
from verl_credit.weighting import STAGE_FIELDS

__all__ = ["AdvantageDumpMixin", "DUMP_ENV", "dump_batch"]

DUMP_ENV = "VERL_CREDIT_DUMP_DIR"
TRAIN_FIELDS = ("uid", "prompts", "responses", "response_mask", "rm_scores", "advantages", "returns")
ENTROPY_FIELD = "entropy"  # written by verl's _compute_old_log_prob
OPTIONAL_FIELDS = (*STAGE_FIELDS, "credit_ref_logprobs", "credit_ref_mask", "credit_cf_request", "credit_ref_request")


def _padded(nested: torch.Tensor) -> torch.Tensor:
    return nested.to_padded_tensor(0) if nested.is_nested else nested


def dump_batch(batch: KVBatchMeta, path: str | Path) -> Path:
    """Save ``batch``'s training fields (see the module docstring) to ``path``."""
    present = set(batch.fields or ())
    optional = [f for f in OPTIONAL_FIELDS if f in present]
    entropy = [ENTROPY_FIELD] if ENTROPY_FIELD in present else []
    select = [*TRAIN_FIELDS, *optional, *entropy]
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=select)
    prompts = list(data["prompts"].unbind())
    prompt_mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(p) for p in prompts], batch_first=True)
    record = {
        "uids": uid_column(data),
        "is_padding": torch.tensor([bool(t.get("is_padding", False)) for t in batch.tags]),
        "prompts": torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True),
        "prompt_mask": prompt_mask,
        **{f: _padded(data[f]) for f in TRAIN_FIELDS if f not in ("uid", "prompts")},
        "stage": stage_tensors(data, optional),
        **{f: _padded(data[f]) for f in entropy},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)
    return path


class AdvantageDumpMixin:
    """Dumps each step's training batch after ``_compute_advantage`` when ``VERL_CREDIT_DUMP_DIR`` is set."""

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        out = super()._compute_advantage(batch, metrics)
        folder = os.environ.get(DUMP_ENV)
        if folder:
            dump_batch(out, Path(folder) / f"step_{int(getattr(self, 'global_steps', 0) or 0)}.pt")
        return out
