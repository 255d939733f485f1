"""A real TransferQueue on a local CPU-only Ray, filled the way verl's V1 agent loop fills it.

Fixture
    local_tq (session) -> SimpleNamespace with the helpers below plus ``tq_config`` (merged TQ config).
    ``tests/`` is not a package, so test modules reach the helpers through the fixture:
    ``local_tq.put_rollouts(...)``.

Helpers (also plain module-level functions)
    compose_ppo_config(*overrides)  verl's ppo_trainer.yaml composed with hydra, as ``main_ppo`` does.
    put_rollouts(prompts, responses, scores, uids, ...) -> KVBatchMeta
        One ``tq.kv_batch_put`` shaped like ``AgentLoopWorkerTQ._agent_loop_postprocess``.
    add_padding(batch, multiple, eos_token_id) -> KVBatchMeta
        verl's ``upsample_batch_to_divisible_size`` (synthetic ``pad<hex>`` rows).
    copy_rollout_log_probs_to_old(batch)
        What verl's ``_compute_old_log_prob`` does in bypass mode; ``_compute_advantage`` needs
        ``old_log_probs`` whenever ``rollout_log_probs`` is stored and bypass mode is off (the default).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from types import SimpleNamespace

# TransferQueue clamps its per-request torch threads to the physical core count and warns on
# every put/get when TQ_NUM_THREADS (default 8) is larger. Read at import time, so set it first.
os.environ.setdefault("TQ_NUM_THREADS", "1")

import pytest  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
import transfer_queue as tq  # noqa: E402
import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput  # noqa: E402
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size  # noqa: E402
from verl.utils.model import compute_position_id_with_mask  # noqa: E402
from verl.utils.tensordict_utils import list_of_dict_to_tensordict  # noqa: E402

VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
RAY_NUM_CPUS = 2
# TQ actors each reserve 1 logical CPU (controller + every SimpleStorage unit). verl's default of
# 8 storage units would wait forever for CPUs on a 2-CPU Ray, so keep a single small unit.
TQ_STORAGE_UNITS = 1
TQ_STORAGE_SIZE = 4096


def compose_ppo_config(*overrides: str):
    """verl's ``ppo_trainer`` config, composed by hydra from verl's own yaml (struct mode, unresolved)."""
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def put_rollouts(
    prompts: list[list[int]],
    responses: list[list[int]],
    scores: list[float],
    uids: list[str],
    partition_id: str = "train",
    extra_fields: dict | None = None,
    *,
    global_steps: int = 1,
) -> KVBatchMeta:
    """Put one finished single-turn rollout per row, as ``_agent_loop_postprocess`` does.

    Rows sharing a uid form a GRPO group; their session ids are 0, 1, ... in order of appearance and
    the key is ``{uid}_{session_id}_0``. ``extra_fields`` maps a field name to one value per row
    (tensor or any Python object), stored like the dataset columns verl forwards to TQ.
    Returns the batch as the replay buffer hands it to the trainer: keys, tags, partition_id
    (``fields`` is None, as in ``ReplayBuffer._materialize_batch``).
    """
    n = len(uids)
    extra_fields = extra_fields or {}
    assert len(prompts) == len(responses) == len(scores) == n, "one prompt/response/score per uid"
    assert all(len(v) == n for v in extra_fields.values()), "extra_fields need one value per row"
    # verl's replay buffer recovers the uid with key.split("_")[0]; its uids are uuid4 strings.
    assert all("_" not in uid for uid in uids), "uids must not contain '_'"

    seen: Counter = Counter()
    keys, fields, tags = [], [], []
    for i, uid in enumerate(uids):
        session_id = seen[uid]
        seen[uid] += 1
        response = list(responses[i])
        # What SingleTurnAgentLoop returns. AgentLoopOutput.as_dict() writes the score with
        # rm_scores[-1] = score, which raises IndexError for an empty response; store no reward
        # token for those (rm_scores has length 0, so the rollout's score is effectively 0).
        output = AgentLoopOutput(
            prompt_ids=list(prompts[i]),
            response_ids=response,
            response_mask=[1] * len(response),
            response_logprobs=[0.0] * len(response),
            reward_score=float(scores[i]) if response else None,
            num_turns=2,
            metrics=AgentLoopMetrics(),
            extra_fields={},
        )
        field = output.as_dict()
        if not response:
            field["rm_scores"] = torch.zeros(0, dtype=torch.float32)
        # kwargs of _run_agent_loop: the dataset row (only the ids TQ keys depend on) + session_id.
        field.update(uid=uid, session_id=session_id, global_steps=global_steps)
        field.update({name: values[i] for name, values in extra_fields.items()})
        # _agent_loop_postprocess additions (text-only: no processor, so no multi-modal inputs).
        input_ids = torch.cat([field["prompts"], field["responses"]])
        attention_mask = torch.ones_like(input_ids)  # used for position ids only; verl does not store it
        field["loss_mask"] = field["response_mask"]
        field["input_ids"] = input_ids
        field["position_ids"] = compute_position_id_with_mask(attention_mask.unsqueeze(0)).squeeze(0)
        field["multi_modal_inputs"] = {}

        keys.append(f"{uid}_{session_id}_0")
        fields.append(field)
        prompt_len, response_len = field["prompts"].size(0), field["responses"].size(0)
        tags.append(
            {
                "status": "success",
                "prompt_len": prompt_len,
                "response_len": response_len,
                "seq_len": prompt_len + response_len,
                "global_steps": global_steps,
                "min_global_steps": None,
                "max_global_steps": None,
            }
        )

    meta = tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(fields), tags=tags, partition_id=partition_id)
    return KVBatchMeta(keys=keys, tags=meta.tags, partition_id=partition_id)


def add_padding(batch: KVBatchMeta, multiple: int, eos_token_id: int) -> KVBatchMeta:
    """verl's own synthetic padding (uid ``pad<hex>``, zero masks/scores, tag ``is_padding``)."""
    return upsample_batch_to_divisible_size(batch, multiple, eos_token_id)


def copy_rollout_log_probs_to_old(batch: KVBatchMeta) -> KVBatchMeta:
    """``old_log_probs := rollout_log_probs``, exactly like verl's bypass-mode ``_compute_old_log_prob``."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["rollout_log_probs"])
    data["old_log_probs"] = data.pop("rollout_log_probs")
    tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=data)
    return batch


def _tq_config():
    """verl's ``transfer_queue`` block as TaskRunnerV1.run passes it to ``tq.init``, shrunk for CPU."""
    conf = compose_ppo_config().transfer_queue
    conf.enable = True  # TaskRunnerV1.run forces this before tq.init
    conf.backend.SimpleStorage.num_data_storage_units = TQ_STORAGE_UNITS
    conf.backend.SimpleStorage.total_storage_size = TQ_STORAGE_SIZE
    assert TQ_STORAGE_UNITS + 1 <= RAY_NUM_CPUS, "TQ would block waiting for CPUs"
    return conf


@pytest.fixture(scope="session")
def local_tq():
    """A fresh local Ray (2 CPUs, no GPU, no dashboard) with TransferQueue initialised on it."""
    if ray.is_initialized():
        pytest.fail("Ray is already initialised; local_tq needs to own a fresh local cluster")
    conf = _tq_config()
    start = time.perf_counter()
    ray.init(
        address="local",  # never attach to a cluster named by RAY_ADDRESS
        num_cpus=RAY_NUM_CPUS,
        num_gpus=0,
        include_dashboard=False,
        namespace="verl_credit_tests",
        object_store_memory=128 * 1024**2,  # TQ moves data over ZMQ, not the object store
        runtime_env={"env_vars": {"TQ_NUM_THREADS": os.environ["TQ_NUM_THREADS"]}},
    )
    try:
        tq_config = tq.init(conf)
        setup_s = time.perf_counter() - start
        print(f"\n[local_tq] ray.init + tq.init took {setup_s:.1f}s")
        yield SimpleNamespace(
            tq_config=tq_config,
            setup_seconds=setup_s,
            compose_ppo_config=compose_ppo_config,
            put_rollouts=put_rollouts,
            add_padding=add_padding,
            copy_rollout_log_probs_to_old=copy_rollout_log_probs_to_old,
        )
    finally:
        try:
            tq.close()  # also safe after a half-finished tq.init
        finally:
            ray.shutdown()
