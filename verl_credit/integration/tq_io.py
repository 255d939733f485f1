"""Reading verl_credit's inputs from TransferQueue, with the checks every reader needs.

fetch(batch, fields, needed, who) -> TensorDict   -- ``tq.kv_batch_get`` plus row/field checks.
uid_column(data) -> list[str]                      -- the ``uid`` column as strings.
stage_tensors(data, fields) -> {name: Tensor}      -- the scoring stage's per-rollout fields, dense.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta

from verl_credit.core.counterfactual import STAGE_PADDING

__all__ = ["fetch", "uid_column", "stage_tensors"]


def fetch(batch: KVBatchMeta, fields: Sequence[str], needed: Sequence[str] | None = None, who: str = "") -> TensorDict:
    """``fields`` of every row of ``batch``; ValueError naming ``who`` and the first absent field of
    ``needed`` (default: all of ``fields``).

    TransferQueue answers an empty batch (with only a warning) when some rows lack a field, so a
    short answer is an error too.
    """
    fields = list(dict.fromkeys(fields))
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
    needed = fields if needed is None else list(needed)
    missing = [f for f in needed if f not in data.keys()]
    if missing or data.batch_size[0] != len(batch.keys):
        name = repr(missing[0]) if missing else f"one of {fields}"
        raise ValueError(
            f"{who or 'verl_credit'} needs batch field {name}, which this run does not produce for every row"
        )
    return data


def uid_column(data: TensorDict) -> list[str]:
    """The ``uid`` column of a fetched batch, one string per row."""
    return [u.decode() if isinstance(u, bytes) else str(u) for u in data.get("uid").tolist()]


def stage_tensors(data: TensorDict, fields) -> dict[str, torch.Tensor]:
    """The stage's per-rollout fields of a fetched batch, dense.

    Each dp shard writes its own S (spans) or J (reference tokens), so rows come back nested when
    shards differ; they are padded with the field's "absent" value (NaN scores, -1 spans and
    answers, 0 for the reference log-probs and mask), never with a value that reads as a measurement.
    """
    out = {}
    for f in fields:
        value = data.get(f)
        out[f] = value.to_padded_tensor(STAGE_PADDING.get(f, 0)) if value.is_nested else value
    return out
