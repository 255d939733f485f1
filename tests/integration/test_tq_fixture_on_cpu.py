"""Self-test of the local TransferQueue fixture: round-trip and verl's stock GRPO advantage on it."""

import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transfer_queue as tq
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

EOS = 2
MULTIPLE = 8


@pytest.fixture(scope="module")
def padded_batch(local_tq):
    """3 prompts x 4 rollouts (varied lengths, one empty response), padded to 16 rows by verl."""
    uids = [uuid.uuid4().hex for _ in range(3)]
    lengths = [[3, 5, 1, 4], [2, 2, 6, 0], [7, 1, 3, 3]]
    scores = [[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    rows = [(g, s) for g in range(3) for s in range(4)]
    prompts = [[10 + g] * (g + 2) for g, _ in rows]
    responses = [[100 + 10 * g + s] * lengths[g][s] for g, s in rows]
    batch = local_tq.put_rollouts(
        prompts=prompts,
        responses=responses,
        scores=[scores[g][s] for g, s in rows],
        uids=[uids[g] for g, _ in rows],
    )
    assert batch.keys[:5] == [f"{uids[0]}_{i}_0" for i in range(4)] + [f"{uids[1]}_0_0"]
    assert [t["response_len"] for t in batch.tags] == [len(r) for r in responses]
    padded = local_tq.add_padding(batch, MULTIPLE, EOS)
    return SimpleNamespace(meta=padded, uids=uids, responses=responses, scores=[scores[g][s] for g, s in rows])


def test_round_trip(padded_batch):
    meta, n_real = padded_batch.meta, len(padded_batch.responses)
    assert len(meta) == 16 and sum(t.get("is_padding", False) for t in meta.tags) == 16 - n_real

    data = tq.kv_batch_get(
        keys=meta.keys, partition_id=meta.partition_id, select_fields=["uid", "responses", "response_mask", "rm_scores"]
    )
    # Variable-length fields come back as jagged nested tensors; uid as a NonTensorStack of str.
    assert data["responses"].is_nested and data["rm_scores"].is_nested
    uids = data.get("uid").tolist()
    assert all(isinstance(u, str) for u in uids)
    assert uids[:n_real] == [padded_batch.uids[i // 4] for i in range(n_real)]
    assert len(set(uids[n_real:])) == 1 and uids[n_real].startswith("pad")

    padded = data.to_padded_tensor()  # what _compute_advantage does (pads with 0)
    for i, resp in enumerate(padded_batch.responses):
        n = len(resp)
        assert padded["responses"][i, :n].tolist() == resp and not padded["responses"][i, n:].any()
        assert padded["response_mask"][i].sum().item() == n
        expected = torch.zeros(padded["rm_scores"].shape[1])
        if n:
            expected[n - 1] = padded_batch.scores[i]
        assert torch.equal(padded["rm_scores"][i], expected)
    for i in range(n_real, len(meta)):  # verl's padding rows: one EOS token, masked out, no reward
        assert padded["responses"][i, 0].item() == EOS
        assert not padded["response_mask"][i].any() and not padded["rm_scores"][i].any()


def test_stock_compute_advantage_grpo(local_tq, padded_batch):
    meta = padded_batch.meta
    trainer = PPOTrainerSync.__new__(PPOTrainerSync)  # skip the heavy __init__
    trainer.config = local_tq.compose_ppo_config("algorithm.adv_estimator=grpo")
    # _compute_advantage runs rollout correction (needs old_log_probs) since rollout_log_probs is stored.
    local_tq.copy_rollout_log_probs_to_old(meta)
    metrics = {}
    trainer._compute_advantage(meta, metrics)
    assert any(k.startswith("rollout_corr/") for k in metrics)

    data = tq.kv_batch_get(
        keys=meta.keys,
        partition_id=meta.partition_id,
        select_fields=["uid", "advantages", "rm_scores", "response_mask"],
    )
    uids = np.array(data.get("uid").tolist(), dtype=object)
    padded = data.to_padded_tensor()
    expected, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=padded["rm_scores"], response_mask=padded["response_mask"], index=uids
    )
    torch.testing.assert_close(padded["advantages"], expected)
    n_real = len(padded_batch.responses)
    assert not padded["advantages"][n_real:].any()
    # hand check, group 0: scores [1, 0, 0, 1] -> mean 0.5, unbiased std 1/sqrt(3) -> +-sqrt(3)/2 on every token
    adv0 = [padded["advantages"][i, : len(padded_batch.responses[i])] for i in range(4)]
    for adv, sign in zip(adv0, [1, -1, -1, 1], strict=True):
        torch.testing.assert_close(adv, torch.full_like(adv, sign * 3**0.5 / 2), atol=1e-4, rtol=0)
