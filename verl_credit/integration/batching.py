"""Query-preserved mini-batches in verl's V1 trainer (``credit.batching.query_preserved=true``).

    QueryPreservedBatchingMixin._balance_batch   -- replaces verl's reordering when the option is on
    check_batching_config(config, credit)        -- start-up checks of every ``credit.batching`` /
                                                    ``credit.diagnostics`` option against verl's config

verl's ``PPOTrainer._balance_batch`` pads the batch (``upsample_batch_to_divisible_size``) and
reorders it so that each dp rank gets a similar number of tokens; the V1 worker then cuts each rank's
contiguous chunk into consecutive mini-batches (see ``verl_credit.core.batching``). That order puts
the rollouts of one prompt into different optimizer steps. With the option on, the mixin keeps verl's
padding and its balancing function (``get_seqlen_balanced_partitions`` on ``calculate_workload``) but
applies them per mini-batch after packing whole groups (:func:`~verl_credit.core.batching.query_preserved_layout`).

Metrics (per step): verl's own ``global_seqlen/*`` stats for the new order (comparable with a stock
run), ``credit/batching/rank_imbalance/mean`` ((max - min) / mean tokens over ranks inside each
mini-batch, averaged), ``credit/batching/extra_padding/rows`` (rows added beyond verl's padding so
that short groups stay whole) and ``credit/batching/ppo_batches/count``.
"""

from __future__ import annotations

import logging
import math

import torch
from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions, log_seqlen_unbalance

from verl_credit.core.batching import (
    group_rows,
    minibatch_rank_loads,
    query_preserved_layout,
    relative_imbalance,
    required_padding,
)
from verl_credit.integration.verl_registry import require_plugin_trainer

__all__ = ["QueryPreservedBatchingMixin", "check_batching_config", "verl_balance", "row_uids"]

logger = logging.getLogger(__name__)

PLUGIN_SAMPLER_PATH = "pkg://verl_credit.integration.buffer"
PLUGIN_SAMPLER_NAME = "RewardBalancedReplayBuffer"


def verl_balance(workloads: list[float], k: int) -> list[list[int]]:
    """verl's own equal-size balancing (Karmarkar-Karp), as ``_balance_batch`` calls it."""
    return get_seqlen_balanced_partitions(workloads, k_partitions=k, equal_size=True)


def row_uids(keys: list[str]) -> list[str]:
    """uid of each TransferQueue key ``{uid}_{session}_{index}`` (as verl's replay buffer reads it)."""
    return [key.split("_")[0] for key in keys]


def _select(config, key: str, default=None):
    return OmegaConf.select(config, key, default=default)


def check_sampler_free(path, name) -> None:
    """The reward-balanced buffer installs verl's custom sampler: refuse another one already set."""
    if (path or name) and (path, name) != (PLUGIN_SAMPLER_PATH, PLUGIN_SAMPLER_NAME):
        raise ValueError(
            "credit.batching.reward_balanced.enabled=true installs its own sampler, but "
            f"trainer.v1.sampler.custom_sampler is already set (path={path!r}, name={name!r}): unset one of them"
        )


def check_batching_config(config, credit) -> None:
    """Start-up checks that need verl's full config; ValueError naming the keys involved.

    query_preserved:
        - the plugin trainer must run (``trainer.use_v1=true``, ``trainer.v1.trainer_mode=credit``);
        - ``actor_rollout_ref.actor.shuffle`` must be false (the worker would shuffle rows across groups);
        - ``actor_rollout_ref.actor.ppo_mini_batch_size`` must be a positive integer; it counts prompts,
          so a mini-batch (``ppo_mini_batch_size * rollout.n`` rows) is never smaller than one group.
        Short groups (failed rollouts kept by ``trainer.v1.sampler.sync_refill_failed_groups=false``,
        verl's default) stay whole: extra padding rows fill their mini-batch (logged). verl's V1
        dynamic sampling (``algorithm.filter_groups``) drops or keeps whole groups, so it is allowed.
    reward_balanced:
        - the plugin trainer must run; ``trainer.v1.sampler.custom_sampler`` must be unset (or ours);
        - ``algorithm.filter_groups.enable`` must be false (verl does not pass it to custom samplers);
        - rewards must exist at sampling time (no colocated reward model), as for verl's DAPO filter.
    diagnostics.token_flip_every: the plugin trainer must run.
    """
    batching, diagnostics = credit.batching, credit.diagnostics
    wanted = [
        name
        for name, on in (
            ("credit.batching.query_preserved=true", batching.query_preserved),
            ("credit.batching.reward_balanced.enabled=true", batching.reward_balanced.enabled),
            ("credit.diagnostics.token_flip_every>0", diagnostics.token_flip_every > 0),
        )
        if on
    ]
    if not wanted:
        return
    require_plugin_trainer(config, wanted[0])

    if batching.query_preserved:
        if _select(config, "actor_rollout_ref.actor.shuffle", False):
            raise ValueError(
                "credit.batching.query_preserved=true needs actor_rollout_ref.actor.shuffle=false: verl's worker "
                "shuffles each rank's rows before cutting mini-batches, which splits the groups again"
            )
        mini = _select(config, "actor_rollout_ref.actor.ppo_mini_batch_size")
        if not (isinstance(mini, int) and mini > 0):
            raise ValueError(f"actor_rollout_ref.actor.ppo_mini_batch_size must be a positive integer, got {mini!r}")
        if not _select(config, "trainer.v1.sampler.sync_refill_failed_groups", False):
            logger.info(
                "credit.batching.query_preserved: failed rollouts leave short groups "
                "(trainer.v1.sampler.sync_refill_failed_groups=false); they are kept whole and padded with "
                "verl's no-op rows, logged as credit/batching/extra_padding/rows"
            )

    if batching.reward_balanced.enabled:
        check_sampler_free(
            _select(config, "trainer.v1.sampler.custom_sampler.path"),
            _select(config, "trainer.v1.sampler.custom_sampler.name"),
        )
        if _select(config, "algorithm.filter_groups.enable", False):
            raise ValueError(
                "credit.batching.reward_balanced.enabled=true and algorithm.filter_groups.enable=true both decide "
                "which groups are trained on, and verl does not pass filter_groups to custom samplers: disable one"
            )
        if _select(config, "reward.reward_model.enable", False) and not _select(
            config, "reward.reward_model.enable_resource_pool", False
        ):
            raise ValueError(
                "credit.batching.reward_balanced.enabled=true needs rewards at sampling time: a colocated reward "
                "model (reward.reward_model.enable=true, enable_resource_pool=false) scores only after sampling; "
                "set reward.reward_model.enable_resource_pool=true or use a rule-based reward"
            )


class QueryPreservedBatchingMixin:
    """``_balance_batch``: whole groups per global mini-batch when ``credit.batching.query_preserved``."""

    def _balance_batch(self, batch: KVBatchMeta, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        if not self.credit_config.batching.query_preserved:
            return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)
        # dp size exactly as verl's _balance_batch reads it
        worker_group = self.actor_rollout_wg
        if "actor" not in worker_group._dispatch_info:
            worker_group._dispatch_info["actor"] = worker_group._query_dispatch_info("actor")
        dp_size = max(worker_group._dispatch_info["actor"]) + 1

        cfg = self.config.actor_rollout_ref
        mini_batch_rows = cfg.actor.ppo_mini_batch_size * cfg.rollout.n
        batch_multiple = math.lcm(self._get_required_batch_multiple(dp_size), mini_batch_rows)
        eos = self.tokenizer.eos_token_id
        batch = upsample_batch_to_divisible_size(batch, batch_multiple, eos)  # verl's padding, as stock

        is_padding = [bool(tag.get("is_padding", False)) for tag in batch.tags]
        groups, free = group_rows(row_uids(batch.keys), is_padding)
        extra = required_padding([len(g) for g in groups], len(free), mini_batch_rows, batch_multiple)
        if extra:  # short groups: more of verl's no-op rows (a multiple of len + extra pads exactly `extra`)
            batch = upsample_batch_to_divisible_size(batch, len(batch) + extra, eos)
            is_padding = [bool(tag.get("is_padding", False)) for tag in batch.tags]

        seqlen = torch.tensor([tag["seq_len"] for tag in batch.tags], dtype=torch.int64)
        layout = query_preserved_layout(
            row_uids(batch.keys),
            is_padding,
            calculate_workload(seqlen).tolist(),
            mini_batch_rows,
            dp_size,
            balance=verl_balance,
        )
        batch.reorder(layout.order)
        metrics.update(
            log_seqlen_unbalance(seqlen_list=seqlen.tolist(), partitions=layout.rank_rows, prefix=logging_prefix)
        )
        loads = minibatch_rank_loads(seqlen.tolist(), layout.order, dp_size, mini_batch_rows)
        metrics["credit/batching/rank_imbalance/mean"] = float(relative_imbalance(loads).mean())
        metrics["credit/batching/extra_padding/rows"] = extra
        metrics["credit/batching/ppo_batches/count"] = len(layout.minibatches)
        return batch
