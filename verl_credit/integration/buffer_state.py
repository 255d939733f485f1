"""The reward-balanced buffer in verl's checkpoints (``credit.batching.reward_balanced``).

    save_buffer_state(buffer, folder, step)        -> writes global_step_<k>/credit_buffer.json (+ TQ)
    load_buffer_state(buffer, folder, step) -> bool  restores them on resume
    resumed_folder(config, global_steps) -> str       the global_step_<k> folder verl resumed from

What is saved: the pool (:meth:`RewardBalancedPool.state_dict`: each waiting group's uid, size,
positives and step, and the running ``*_total`` counters) as JSON, and, when groups are waiting,
the rows they hold. The rows live in TransferQueue, which verl's sync trainer does not checkpoint
and which does not outlive the process, so they are written with TransferQueue's own
``save_checkpoint`` (the call verl's async trainers make) into ``credit_transfer_queue/``. That
writes everything TransferQueue holds at the save, which includes the batch just trained at step k
(verl clears it after the save): on resume every row that does not belong to a waiting group is
cleared again (partition ``train``), so only the waiting groups remain, with the prompt tags verl's replay buffer reads.
"""

from __future__ import annotations

import json
import logging
import os

import transfer_queue as tq

__all__ = ["STATE_FILE", "TQ_DIR", "save_buffer_state", "load_buffer_state", "resumed_folder"]

logger = logging.getLogger(__name__)

STATE_FILE = "credit_buffer.json"
TQ_DIR = "credit_transfer_queue"
VERSION = 1


def save_buffer_state(buffer, folder: str, step: int) -> str:
    """Write ``buffer.pool`` (and, with groups waiting, TransferQueue) into ``folder``; returns the JSON path."""
    os.makedirs(folder, exist_ok=True)
    pool = buffer.pool.state_dict()
    with_rows = bool(pool["waiting"])
    if with_rows:
        tq.save_checkpoint(os.path.join(folder, TQ_DIR), metadata={"global_steps": step})
    state = {"version": VERSION, "global_steps": step, "transfer_queue": with_rows, "pool": pool}
    path = os.path.join(folder, STATE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)
    logger.info(
        "reward-balanced buffer: saved %d waiting groups (%d rollouts) at step %d to %s",
        len(pool["waiting"]),
        sum(r["size"] for r in pool["waiting"]),
        step,
        folder,
    )
    return path


def load_buffer_state(buffer, folder: str, step: int, partition_id: str = "train") -> bool:
    """Restore what :func:`save_buffer_state` wrote in ``folder``. False (and a warning) for a
    checkpoint without it (written before verl_credit saved the buffer): the buffer starts empty.
    RuntimeError when a waiting group's rows are not in the saved TransferQueue."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        logger.warning(
            "credit.batching.reward_balanced: resuming at step %d without buffer state (%s is missing: a "
            "checkpoint from before the buffer was saved); the buffer starts empty and its credit/buffer/*_total "
            "counters restart from 0",
            step,
            path,
        )
        return False
    with open(path) as f:
        state = json.load(f)
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: buffer state version {state.get('version')!r}, this verl_credit reads {VERSION}")
    buffer.pool.load_state_dict(state["pool"])
    waiting = set(buffer.pool.waiting)
    if state["transfer_queue"]:
        tq.load_checkpoint(os.path.join(folder, TQ_DIR))
    kept = _keep_only(waiting, partition_id)
    missing = sorted(waiting - kept)
    if missing:
        raise RuntimeError(
            f"{path}: {len(missing)} waiting groups of the reward-balanced buffer have no rows in "
            f"{os.path.join(folder, TQ_DIR)} (first: {missing[0]}); the checkpoint is incomplete"
        )
    pool = buffer.pool
    logger.warning(
        "credit.batching.reward_balanced: resumed at step %d with %d waiting groups (%d rollouts) and the "
        "saved totals (generated %d rollouts, trained %d)",
        step,
        len(waiting),
        sum(r.size for r in pool.waiting.values()),
        pool.generated["rollouts"],
        pool.released["rollouts"],
    )
    return True


def _keep_only(waiting: set[str], partition_id: str) -> set[str]:
    """Clear every row of ``partition_id`` that is not a waiting group's (the batch trained at the
    save); returns the uids that still have rollout rows there."""
    items = (tq.kv_list(partition_id) or {}).get(partition_id, {})
    stale = [key for key in items if key.split("_")[0] not in waiting]
    if stale:
        tq.kv_clear(keys=stale, partition_id=partition_id)
    return {key.split("_")[0] for key, tag in items.items() if not tag.get("is_prompt", False)} & waiting


def resumed_folder(config, global_steps: int) -> str:
    """The ``global_step_<N>`` folder verl's ``_load_checkpoint`` resumed from (absolute)."""
    if config.trainer.resume_mode == "resume_path":
        folder = config.trainer.resume_from_path
    else:
        folder = os.path.join(config.trainer.default_local_dir, f"global_step_{global_steps}")
    return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)
