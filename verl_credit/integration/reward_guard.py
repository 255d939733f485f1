"""Rewards checked before verl_credit's trainer uses them (issue 22); see ``verl_credit.core.reward_checks``.

    RewardGuardMixin._compute_advantage   checks the step's batch, then ``super()``
    guard_rewards(batch, ..., metrics)    the check itself (rewards finite; rollouts dropped by verl)
    prompt_text(key, partition_id, tok)   the start of a rollout's prompt, for messages
    agent_loop_error(uids)                the reward function's error, read from the Ray workers' logs

Every step of the plugin trainer (whichever features are on), before the scoring stage, the length
reward and the estimator read ``rm_scores``:

1. every real row's reward (verl's ``rm_scores``; padding rows excluded) must be a finite number, else
   ValueError naming the rollout, its uid and the start of its prompt;
2. the step asked verl's replay buffer for ``sample_batch_size`` groups (``_step_once``'s argument:
   ``data.train_batch_size / parameter_sync_step``) of ``actor_rollout_ref.rollout.n`` rollouts.
   verl's agent loop drops a rollout whose reward function raised (or returned a string, which
   verl's reward loop cannot turn into a score): the group arrives short and ``_balance_batch``
   pads the batch with synthetic ``pad...`` rows in its place. The step logs
   ``credit/rollouts_dropped/count`` and ``credit/rollouts_dropped/fraction`` and fails when the
   fraction is above ``credit.max_dropped_fraction`` (default 0). The message gives the reward
   function's error when it can be read from the Ray session's worker logs on this node (verl logs
   it there as ``Error in _run_prompt for uid=...``); otherwise it says where to look.
"""

from __future__ import annotations

import glob
import logging
import os
import re

import transfer_queue as tq
from transfer_queue import KVBatchMeta

from verl_credit.core.reward_checks import check_dropped, check_rewards, count_dropped
from verl_credit.integration.tq_io import fetch, uid_column

__all__ = ["RewardGuardMixin", "guard_rewards", "prompt_text", "agent_loop_error", "AGENT_LOOP_ERROR"]

logger = logging.getLogger(__name__)

AGENT_LOOP_ERROR = "Error in _run_prompt for uid="  # verl 0.9.1 agent_loop_tq.AgentLoopWorkerTQ._run_prompt
LOG_TAIL_BYTES = 4 << 20  # bytes read from the end of each worker log
LOG_FILES = 64  # most recently written worker logs searched


def prompt_text(key: str, partition_id: str, tokenizer=None) -> str | None:
    """The last user message of the rollout stored under ``key`` (its ``raw_prompt``), else its
    prompt token ids decoded with ``tokenizer``, else None. Only for error messages."""
    for field in ("raw_prompt", "prompts"):
        try:
            data = tq.kv_batch_get(keys=[key], partition_id=partition_id, select_fields=[field])
            value = list(data[field])[0]
        except Exception:  # absent field: try the next way
            continue
        if field == "prompts":
            try:
                return tokenizer.decode([int(i) for i in value], skip_special_tokens=True)
            except Exception:  # no (usable) tokenizer
                return None
        if isinstance(value, list | tuple) and value and all(isinstance(m, dict) for m in value):
            users = [m for m in value if m.get("role") == "user"] or list(value)
            return str(users[-1].get("content", ""))
        return str(value)
    return None


def _ray_logs_dir() -> str | None:
    """This Ray session's log folder (the trainer runs in a Ray actor on the head node)."""
    try:
        import ray

        for node in (getattr(ray._private.worker.global_worker, "node", None), ray._private.worker._global_node):
            if node is not None:
                return node.get_logs_dir_path()
    except Exception:  # not in a Ray process, or Ray's internals moved: fall back
        pass
    fallback = "/tmp/ray/session_latest/logs"
    return fallback if os.path.isdir(fallback) else None


def agent_loop_error(uids, logs_dir: str | None = None) -> str | None:
    """The exception line verl logged for one of ``uids`` (``ValueError: ...``), else for any rollout
    of this session (a short group restored from a checkpoint failed in an earlier session), read
    from the end of the most recent Ray worker logs under ``logs_dir`` (default: this Ray session's);
    None if there is none."""
    logs_dir = logs_dir or _ray_logs_dir()
    if not logs_dir:
        return None
    files = glob.glob(os.path.join(logs_dir, "worker-*.err")) + glob.glob(os.path.join(logs_dir, "worker-*.out"))
    files.sort(key=lambda p: os.path.getmtime(p), reverse=True)
    texts = []
    for path in files[:LOG_FILES]:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
                texts.append(f.read().decode("utf-8", errors="replace"))
        except OSError:
            continue
    for markers in ([f"{AGENT_LOOP_ERROR}{uid}" for uid in uids], [AGENT_LOOP_ERROR]):
        for text in texts:
            for marker in markers:
                at = text.rfind(marker)
                if at >= 0:
                    return _exception_line(text[at:].splitlines()[1:])
    return None


_RAY_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)?\([^)]*pid=\d+[^)]*\)(\x1b\[[0-9;]*m)? ?")  # "(Worker pid=1) "
_LOG_RECORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)[:\s]")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(\([\w.]+\))?: ")


def _exception_line(lines: list[str]) -> str | None:
    """The last ``Type: message`` line of the traceback that follows verl's error line: with
    exceptions re-raised through Ray (``RayTaskError(ValueError): ...``), the last one printed is
    the reward function's own (``ValueError: bad reward ...``)."""
    found = None
    for line in lines[:400]:
        line = _RAY_PREFIX.sub("", line.rstrip("\n"))
        if _LOG_RECORD.match(line) or AGENT_LOOP_ERROR in line:
            break  # the next log record
        if _EXCEPTION.match(line):
            found = line.strip()
    return found[:300] if found else None


def guard_rewards(
    batch: KVBatchMeta,
    expected_groups: int | None,
    n: int,
    max_dropped_fraction: float,
    metrics: dict,
    logs_dir: str | None = None,
    tokenizer=None,
) -> None:
    """Check the step's batch (see the module docstring); adds ``credit/rollouts_dropped/*`` to ``metrics``.

    ``expected_groups``: the groups this step's replay-buffer sample was asked for; None (the batch
    did not come from a sample, e.g. a trainer driven by hand) skips the dropped-rollout check."""
    real = [
        i
        for i, (key, tag) in enumerate(zip(batch.keys, batch.tags, strict=True))
        if not tag.get("is_padding", False) and not key.startswith("pad")
    ]
    keys = [batch.keys[i] for i in real]
    if not keys:
        raise ValueError("verl_credit reward check: the step's batch has no rollout, only verl's padding rows")
    view = KVBatchMeta(partition_id=batch.partition_id, keys=keys, tags=[batch.tags[i] for i in real])
    data = fetch(view, ["uid", "rm_scores"], who="verl_credit reward check")
    uids = uid_column(data)
    scores = data["rm_scores"]
    scores = scores.to_padded_tensor(0.0) if scores.is_nested else scores
    check_rewards(
        scores, uids, "advantage step", prompt_of=lambda b: prompt_text(keys[b], batch.partition_id, tokenizer)
    )
    if expected_groups is None:
        return
    count = count_dropped(uids, expected_groups, n)
    metrics.update({f"credit/{k}": v for k, v in count.metrics().items()})
    if count.fraction > max_dropped_fraction:
        error = agent_loop_error(count.short_groups, logs_dir)
        if error is not None:
            reason = f"the reward function raised, e.g. {error!r} (from the Ray workers' log)"
        else:
            reason = (
                f"the reward function's error is in the agent-loop workers' log, after '{AGENT_LOOP_ERROR}<uid>' "
                "(Ray's session logs, worker-*.err)"
            )
        check_dropped(count, max_dropped_fraction, reason)


class RewardGuardMixin:
    """``_step_once`` records how many groups the step samples; ``_compute_advantage`` runs
    :func:`guard_rewards` on the batch, then the rest of the chain."""

    def _step_once(self, metrics: dict, timing_raw: dict, sample_batch_size: int) -> KVBatchMeta:
        self._credit_sampled_groups = int(sample_batch_size)  # what verl asks its replay buffer for
        try:
            return super()._step_once(metrics, timing_raw, sample_batch_size)
        finally:
            self._credit_sampled_groups = None

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        guard_rewards(
            batch,
            expected_groups=getattr(self, "_credit_sampled_groups", None),
            n=int(self.config.actor_rollout_ref.rollout.n),
            max_dropped_fraction=float(self.credit_config.max_dropped_fraction),
            metrics=metrics,
            tokenizer=getattr(self, "tokenizer", None),
        )
        return super()._compute_advantage(batch, metrics)
