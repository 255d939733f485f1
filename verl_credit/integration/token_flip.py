"""Token-flipping diagnostic (``credit.diagnostics.token_flip_every=N``; METHODS.md section 5).

    TokenFlipDiagnosticMixin._update_actor

Every N steps, after verl's actor update, the mixin asks the actor workers for the log-probs of the
same batch again (``actor_rollout_wg.compute_log_prob``, the call verl's ``_compute_old_log_prob``
makes, in eval mode without grad), stores them as the TransferQueue field
``credit_post_update_log_probs`` and logs :func:`~verl_credit.core.token_flip.token_flip_shares`
against ``old_log_probs`` and ``advantages``:

    credit/token_flip/positive_share   flipped tokens / tokens of rollouts with advantage > 0
    credit/token_flip/negative_share   the same for advantage < 0
    (plus ``.../positive_tokens``, ``.../negative_tokens``)

"Before" is ``old_log_probs``: the actor's own log-probs before the update, except in
``algorithm.rollout_correction.bypass_mode``, where they are the rollout engine's (the share then also
counts engine/trainer numeric differences). The worker round trip needs verl's GPU engine; on CPU only
the metric and the TransferQueue plumbing (with a stand-in worker group) are tested.
"""

from __future__ import annotations

import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.workers.utils.padding import response_from_nested

from verl_credit.core.token_flip import token_flip_shares
from verl_credit.integration.tq_io import fetch

__all__ = ["TokenFlipDiagnosticMixin", "POST_UPDATE_FIELD"]

POST_UPDATE_FIELD = "credit_post_update_log_probs"


def _padded(tensor):
    """A nested (jagged) response tensor as a right-padded (B, T) one."""
    return tensor.to_padded_tensor(0.0) if tensor.is_nested else tensor


class TokenFlipDiagnosticMixin:
    """``_update_actor``: verl's update, then (every N steps) the token-flip shares of the batch."""

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._update_actor(batch, metrics)
        every = self.credit_config.diagnostics.token_flip_every
        if every and int(self.global_steps) % every == 0:
            metrics.update(self._token_flip_metrics(batch))
        return batch

    def _token_flip_metrics(self, batch: KVBatchMeta) -> dict:
        saved = dict(batch.extra_info)
        batch.extra_info.update(
            {
                "calculate_entropy": False,
                "compute_loss": False,
                "temperature": self.config.actor_rollout_ref.rollout.temperature,
            }
        )
        try:
            output = self.actor_rollout_wg.compute_log_prob(batch)  # writes `log_probs` to TransferQueue
        finally:
            batch.extra_info.clear()
            batch.extra_info.update(saved)
        if len(output) != len(batch):
            raise RuntimeError(f"compute_log_prob returned {len(output)} rows for a batch of {len(batch)}")
        fields = ["log_probs", "old_log_probs", "advantages", "response_mask"]
        data = fetch(batch, fields, who="credit.diagnostics.token_flip_every")
        new = response_from_nested(data["log_probs"], data["response_mask"])
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({POST_UPDATE_FIELD: new}, batch_size=len(batch)),
        )
        old, advantages, mask = (_padded(data[f]) for f in ("old_log_probs", "advantages", "response_mask"))
        shares = token_flip_shares(old, _padded(new), advantages, mask)
        return {f"credit/token_flip/{name.replace('/', '_')}": value for name, value in shares.items()}
