"""The scoring stage end to end on CPU: trainer -> TransferQueue -> worker method -> weights / R3.

The worker method runs for real; only verl's engine is replaced by a stand-in with the same
contract as ``infer_batch`` (nested ``log_probs`` over prompt + response, position t holding
log p(x_{t+1} | x_<=t)), backed by the tiny random Qwen2.
"""

import uuid
from types import SimpleNamespace

import pytest
import torch
import transfer_queue as tq
from hydra import compose, initialize_config_module
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

import verl_credit.main_ppo  # noqa: F401  (registers the credit schema)
from verl_credit.core.counterfactual import paint_spans, span_importance, token_weights
from verl_credit.core.groups import group_index_from_uids, group_outcome_advantage
from verl_credit.integration import stage_coverage
from verl_credit.integration.scoring_stage import ScoringStageMixin
from verl_credit.integration.trainer import CreditPPOTrainer, validate_run_config
from verl_credit.integration.worker import STAGE_KEY, CreditActorRolloutRefWorker
from verl_credit.scoring import CounterfactualConfig, hf_scorer, score_spans

TEXTS = [
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day.\n#### 18",
    "It takes 2/2=1 bolt of white fiber. So the total is 2+1=3 bolts.\n#### 3",
    "First compute 12 * 7 = 84. Then add the remaining 16 apples to get 100. #### 100",
    "the text just stops without",
]


class StandInActor:
    """verl engine contract for ``infer_batch``, computed with a transformers model."""

    def __init__(self, model, tokenizer):
        self.model, self.model_config = model, SimpleNamespace(tokenizer=tokenizer)
        self.calls = 0

    @torch.no_grad()
    def infer_batch(self, data: TensorDict) -> TensorDict:
        self.calls += 1
        assert tu.get(data, key="compute_loss") is False
        out = []
        for ids, mask in zip(data["input_ids"].unbind(), data["loss_mask"].unbind(), strict=True):
            assert ids.shape == mask.shape
            logp = torch.log_softmax(self.model(input_ids=ids.unsqueeze(0)).logits[0], dim=-1)
            nxt = torch.zeros(ids.numel())
            nxt[:-1] = logp[:-1].gather(1, ids[1:].unsqueeze(1)).squeeze(1)
            out.append(nxt)
        return TensorDict({"log_probs": torch.nested.as_nested_tensor(out, layout=torch.jagged)}, batch_size=[len(out)])


class SingleRankWorkerGroup:
    """The worker method called in this process through verl's own ``@register`` wrapper, i.e. verl's
    real TransferQueue bridge (``tqbridge``): the worker receives exactly the fields the dispatched
    meta lists (every field only when ``meta.fields`` is None), and its output is put back by verl.
    What Ray adds at dp=1 (one rank, the whole batch) is the only thing left out; dp=2 runs in the
    real-step tests (tests/integration/test_real_steps_on_cpu.py)."""

    def __init__(self, worker):
        from verl.utils import transferqueue_utils

        transferqueue_utils.TQ_INITIALIZED = True  # the local_tq fixture initialised TQ in this process
        worker._Worker__dispatch_dp_rank, worker._Worker__collect_dp_rank = {}, {}
        worker._register_dispatch_collect_info("actor", dp_rank=0, is_collect=True)
        self.worker, self.calls, self.fields = worker, 0, []

    def compute_credit_scores(self, batch):
        self.calls += 1
        self.fields.append(batch.fields)
        out = self.worker.compute_credit_scores(batch)
        assert len(out) == len(batch), "one row per input row"
        return out


def _as_after_old_log_prob(batch):
    """The meta as verl's non-bypass ``_compute_old_log_prob`` returns it: the one ``kv_batch_put``
    returned, whose ``fields`` lists every stored field (verl's dispatch then reads only those)."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["rollout_log_probs"])
    data["old_log_probs"] = data.pop("rollout_log_probs")
    meta = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=data)
    assert meta.fields is not None and "prompts" in meta.fields
    return meta


def _config(*overrides):
    with initialize_config_module("verl_credit.conf", version_base=None):
        return compose("credit_trainer", overrides=["actor_rollout_ref.rollout.n=4", *overrides])


def _setup(local_tq, tiny, *overrides, truths=None):
    model, tok = tiny
    uids = [uuid.uuid4().hex for _ in range(3)]
    rows = [
        (uids[0], TEXTS[0], 1.0),
        (uids[0], TEXTS[1], 0.0),
        (uids[0], TEXTS[2], 1.0),
        (uids[0], TEXTS[0], 1.0),
        (uids[1], TEXTS[1], 1.0),
        (uids[1], TEXTS[2], 1.0),  # all correct: not scored
        (uids[2], TEXTS[3], 0.0),
        (uids[2], TEXTS[2], 1.0),
    ]
    prompts = [tok(f"Q{u[:4]}: how many?")["input_ids"] for u, _, _ in rows]
    responses = [tok(t)["input_ids"] + [tok.eos_token_id] for _, t, _ in rows]
    scores = [s for _, _, s in rows]
    extra = {"reward_model": [{"ground_truth": t} for t in truths]} if truths is not None else None
    batch = local_tq.put_rollouts(prompts, responses, scores, [u for u, _, _ in rows], extra_fields=extra)
    batch = _as_after_old_log_prob(local_tq.add_padding(batch, 12, tok.eos_token_id))
    trainer = CreditPPOTrainer.__new__(CreditPPOTrainer)
    trainer.config = _config(*overrides)
    trainer.credit_config = validate_run_config(trainer.config)
    trainer.tokenizer, trainer.global_steps = tok, 3
    worker = CreditActorRolloutRefWorker.__new__(CreditActorRolloutRefWorker)
    worker.actor = StandInActor(model, tok)
    trainer.actor_rollout_wg = SingleRankWorkerGroup(worker)
    return trainer, batch, prompts, responses, scores, [u for u, _, _ in rows]


def _read(batch, *fields):
    return tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(fields))


def _expected(tiny, prompts, responses, scores, uids, rows, mode="counterfactual", base=None):
    model, tok = tiny
    cfg = validate_run_config(_config("algorithm.adv_estimator=counterfactual", f"credit.counterfactual.mode={mode}"))
    res = score_spans(
        tok,
        hf_scorer(model, tok.pad_token_id),
        [torch.tensor(p) for p in prompts],
        [torch.tensor(r) for r in responses],
        cfg.counterfactual,
        rows=rows,
    )
    T = max(len(r) for r in responses)
    mask = torch.zeros(len(responses), T)
    for i, r in enumerate(responses):
        mask[i, : len(r)] = 1
    _, imp = span_importance(res.scores)
    w = token_weights(imp, res.spans, res.answer, T, cfg.counterfactual)
    if base is None:
        base = group_outcome_advantage(torch.tensor(scores, dtype=torch.float64), group_index_from_uids(uids))
        base = base[:, None] * mask
    return base * w, w, mask


def test_counterfactual_estimator_end_to_end(local_tq, tiny):
    trainer, batch, prompts, responses, scores, uids = _setup(local_tq, tiny, "algorithm.adv_estimator=counterfactual")
    metrics = {}
    trainer._compute_advantage(batch, metrics)
    assert trainer.actor_rollout_wg.calls == 1
    # the dispatched meta lists what the worker reads, and nothing the rest of the step depends on
    assert trainer.actor_rollout_wg.fields == [["prompts", "responses", "response_mask", "credit_cf_request"]]
    req = _read(batch, "credit_cf_request").to_padded_tensor()["credit_cf_request"].flatten().tolist()
    # group 0 mixed (row 3 duplicates row 0), group 1 all correct, group 2 mixed; padding rows never
    assert req == [1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    B = len(uids)
    adv = _read(batch, "advantages").to_padded_tensor()["advantages"]
    expected, w, mask = _expected(tiny, prompts, responses, scores, uids, rows=[0, 1, 2, 3, 6, 7])
    torch.testing.assert_close(adv[:B, : expected.shape[1]], expected.float(), rtol=1e-4, atol=1e-4)
    assert (adv[B:] == 0).all()
    assert (w[0][mask[0].bool()] != 1).any()  # the weights do something
    assert torch.equal(adv[3], adv[0])  # the duplicate got its source's scores
    # 5 rows sent to the forward; 6 asked with the duplicate; row 6 has no answer: 5 scored
    assert metrics["credit/counterfactual/rollouts_requested/count"] == 5.0
    assert metrics["credit/counterfactual/rollouts_scored/count"] == 5.0
    assert metrics["credit/counterfactual/rollouts_scored/fraction"] == pytest.approx(5 / 6)
    assert metrics["credit/counterfactual/duplicates_copied/count"] == 1.0
    assert 0 < metrics["credit/stage/forward_tokens_vs_naive/ratio"] < 1
    assert "credit/counterfactual/distractor_spans/fraction" in metrics
    for name in [m for m in metrics if m.startswith("credit/")]:  # verl reduces metrics by substring
        assert "min" not in name and "max" not in name, name


def test_uniform_control_skips_the_stage_and_equals_grpo(local_tq, tiny):
    trainer, batch, prompts, responses, scores, uids = _setup(
        local_tq,
        tiny,
        "algorithm.adv_estimator=grpo",
        "credit.token_weighting=counterfactual",
        "credit.counterfactual.mode=uniform",
    )
    trainer._compute_advantage(batch, {})
    assert trainer.actor_rollout_wg.calls == 0
    adv = _read(batch, "advantages").to_padded_tensor()["advantages"]
    base = group_outcome_advantage(torch.tensor(scores, dtype=torch.float64), group_index_from_uids(uids))
    mask = _read(batch, "response_mask").to_padded_tensor()["response_mask"][: len(uids)]
    torch.testing.assert_close(adv[: len(uids)], (base[:, None] * mask).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["inverted", "random"])
def test_controls_run_through_the_trainer(local_tq, tiny, mode):
    trainer, batch, *_ = _setup(
        local_tq, tiny, "algorithm.adv_estimator=counterfactual", f"credit.counterfactual.mode={mode}"
    )
    metrics = {}
    trainer._compute_advantage(batch, metrics)
    first = _read(batch, "advantages").to_padded_tensor()["advantages"]
    trainer._compute_advantage(batch, {})  # same step, same seed: reproducible
    assert torch.equal(first, _read(batch, "advantages").to_padded_tensor()["advantages"])
    assert metrics["credit/counterfactual/weight/std"] > 0


def test_weighting_composes_with_ktae(local_tq, tiny):
    trainer, batch, prompts, responses, scores, uids = _setup(
        local_tq, tiny, "algorithm.adv_estimator=ktae", "credit.token_weighting=counterfactual"
    )
    trainer._compute_advantage(batch, {})
    weighted = _read(batch, "advantages").to_padded_tensor()["advantages"]
    plain = CreditPPOTrainer.__new__(CreditPPOTrainer)
    plain.config = _config("algorithm.adv_estimator=ktae")
    plain.credit_config, plain.tokenizer, plain.global_steps = validate_run_config(plain.config), tiny[1], 3
    plain._compute_advantage(batch, {})
    ktae = _read(batch, "advantages").to_padded_tensor()["advantages"]
    _, w, _ = _expected(tiny, prompts, responses, scores, uids, rows=[0, 1, 2, 3, 6, 7])
    B = len(uids)
    torch.testing.assert_close(weighted[:B, : w.shape[1]], ktae[:B, : w.shape[1]] * w, rtol=1e-4, atol=1e-4)


def test_worker_is_injected_only_when_needed():
    from verl.trainer.ppo.utils import Role

    class Base:
        def _init_resource_pool_mgr(self):
            self.role_worker_mapping = {Role.ActorRollout: "stock"}

    class T(ScoringStageMixin, Base):
        pass

    for overrides, injected in [
        (["algorithm.adv_estimator=counterfactual"], True),
        (["algorithm.adv_estimator=ktae"], False),
        (["algorithm.adv_estimator=counterfactual", "credit.counterfactual.mode=uniform"], False),
        (["credit.length_reward.enabled=true", "credit.length_reward.scorer=counterfactual"], True),
        (["credit.length_reward.enabled=true", "credit.length_reward.scorer=surprisal"], False),
    ]:
        t = T()
        t.config = _config(*overrides)
        t.credit_config = validate_run_config(t.config)
        t._init_resource_pool_mgr()
        got = t.role_worker_mapping[Role.ActorRollout]
        assert (got != "stock") == injected
        if injected:
            assert got.__ray_actor_class__ is CreditActorRolloutRefWorker


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["algorithm.adv_estimator=counterfactual", "actor_rollout_ref.actor.policy_loss.loss_mode=gspo"],
            "sequence-level",
        ),
        (["algorithm.adv_estimator=gae", "credit.token_weighting=counterfactual"], "over grpo or a verl_credit"),
    ],
)
def test_start_up_rejects(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_run_config(_config(*overrides))


def test_worker_rows_without_request_are_nan(tiny):
    model, tok = tiny
    worker = CreditActorRolloutRefWorker.__new__(CreditActorRolloutRefWorker)
    worker.actor = StandInActor(model, tok)
    responses = [torch.tensor(tok(t)["input_ids"] + [tok.eos_token_id]) for t in TEXTS[:2]]
    data = TensorDict(
        {
            "prompts": torch.nested.as_nested_tensor(
                [torch.tensor([5, 6, 7]), torch.tensor([8, 9])], layout=torch.jagged
            ),
            "responses": torch.nested.as_nested_tensor(responses, layout=torch.jagged),
            "response_mask": torch.nested.as_nested_tensor(
                [torch.ones_like(r) for r in responses], layout=torch.jagged
            ),
            "credit_cf_request": torch.tensor([[0], [0]]),
        },
        batch_size=[2],
    )
    from verl_credit.integration.worker import config_dict
    from verl_credit.scoring import CounterfactualConfig

    stage = {"counterfactual": config_dict(CounterfactualConfig()), "reference": None}
    tu.assign_non_tensor(data, **{STAGE_KEY: stage, "temperature": 1.0})
    out = worker.compute_credit_scores(data)
    assert out.batch_size[0] == 2 and torch.isnan(out["credit_cf_scores"]).all()
    assert worker.actor.calls == 1  # the engine is still called once: dp collectives stay matched


TRUTHS = ["18", "18", "18", "18", "3", "3", "100", "100"]


def test_variance_weighted_end_to_end(local_tq, tiny):
    from verl_credit.core.variance import VarianceParams, r3_rewards
    from verl_credit.scoring import reference_answer, score_reference

    model, tok = tiny
    trainer, batch, prompts, responses, scores, uids = _setup(
        local_tq, tiny, "algorithm.adv_estimator=variance_weighted", truths=TRUTHS
    )
    metrics = {}
    trainer._compute_advantage(batch, metrics)
    adv = _read(batch, "advantages").to_padded_tensor()["advantages"]
    refs = [torch.tensor(tok(f"#### {t}", add_special_tokens=False)["input_ids"]) for t in TRUTHS]
    marks = [reference_answer(tok, "#### {answer}", t)[1] for t in TRUTHS]
    lp, mask, _ = score_reference(
        tok,
        hf_scorer(model, tok.pad_token_id),
        [torch.tensor(p) for p in prompts],
        [torch.tensor(r) for r in responses],
        refs,
        rows=list(range(len(uids))),
        answer_masks=marks,
    )
    # the stage scores the answer's own tokens only: "#### " is context
    stage_mask = _read(batch, "credit_ref_mask").to_padded_tensor()["credit_ref_mask"][: len(uids)]
    torch.testing.assert_close(stage_mask[:, : mask.shape[1]].long(), mask.long())
    assert all(int(m.sum()) == len(t) for m, t in zip(mask, TRUTHS, strict=True))  # one token per digit here
    groups = group_index_from_uids(uids)
    res = r3_rewards(lp, mask, torch.tensor(scores), groups, VarianceParams())
    z = group_outcome_advantage(res.shaped.double(), groups)
    B = len(uids)
    resp_mask = _read(batch, "response_mask").to_padded_tensor()["response_mask"][:B]
    torch.testing.assert_close(adv[:B], (z[:, None] * resp_mask).float(), rtol=1e-4, atol=1e-4)
    assert res.contrast[groups.group[4]]  # the all-correct group still has contrast from R3 ...
    assert adv[4].abs().sum() > 0 and (adv[B:] == 0).all()  # ... so its rollouts get a non-zero advantage
    assert metrics["credit/variance/rollouts_scored/count"] == float(B)
    assert metrics["credit/variance/r3_spread_all_correct/std"] > 0


def test_variance_weighted_needs_ground_truth(local_tq, tiny):
    truths = list(TRUTHS)
    truths[5] = ""
    trainer, batch, *_ = _setup(local_tq, tiny, "algorithm.adv_estimator=variance_weighted", truths=truths)
    with pytest.raises(ValueError, match=r"rollout 5: field 'reward_model\.ground_truth' is missing"):
        trainer._compute_advantage(batch, {})


def test_counterfactual_with_gold_answers(local_tq, tiny):
    model, tok = tiny
    trainer, batch, prompts, responses, scores, uids = _setup(
        local_tq,
        tiny,
        "algorithm.adv_estimator=counterfactual",
        "credit.counterfactual.answer_source=gold",
        truths=TRUTHS,
    )
    trainer._compute_advantage(batch, {})
    got = _read(batch, "credit_cf_scores").to_padded_tensor()["credit_cf_scores"]
    cfg = trainer.credit_config.counterfactual
    gold = [torch.tensor(tok(f"#### {t}", add_special_tokens=False)["input_ids"]) for t in TRUTHS]
    res = score_spans(
        tok,
        hf_scorer(model, tok.pad_token_id),
        [torch.tensor(p) for p in prompts],
        [torch.tensor(r) for r in responses],
        cfg,
        rows=[0, 1, 2, 6, 7],
        gold_answers=gold,
    )
    B = len(uids)
    torch.testing.assert_close(
        got[:B].nan_to_num(99.0),
        res.scores.nan_to_num(99.0).where(torch.arange(B).unsqueeze(1) != 3, res.scores[0].nan_to_num(99.0)),
        rtol=0,
        atol=1e-4,
    )
    assert not torch.isnan(got[6, 0])  # the rollout without an answer is scored on the gold answer


def test_reference_product_uses_the_runs_answer_markers(tiny):
    """R3 removes each rollout's own answer with the same detection as the spans: custom markers count."""
    from verl_credit.integration.worker import stage_rows
    from verl_credit.scoring import score_reference
    from verl_credit.spans import SpanParams, find_spans, span_params_of

    model, tok = tiny
    responses = [torch.tensor(tok(t)["input_ids"] + [tok.eos_token_id]) for t in (TEXTS[3], TEXTS[2])]
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    data = TensorDict(
        {
            "prompts": torch.nested.as_nested_tensor(prompts, layout=torch.jagged),
            "responses": torch.nested.as_nested_tensor(responses, layout=torch.jagged),
            "response_mask": torch.nested.as_nested_tensor(
                [torch.ones_like(r) for r in responses], layout=torch.jagged
            ),
            "credit_ref_request": torch.tensor([[1], [1]]),
        },
        batch_size=[2],
    )
    tu.assign_non_tensor_stack(data, "reward_model", [{"ground_truth": "100"}, {"ground_truth": "100"}])
    custom = SpanParams(answer_markers=["stops"])
    stage = {
        "counterfactual": None,
        "reference": {"answer_template": "#### {answer}"},
        "span_params": span_params_of(custom),
    }
    out = stage_rows(data, tok, hf_scorer(model, tok.pad_token_id), stage)
    refs = [torch.tensor(tok("#### 100", add_special_tokens=False)["input_ids"])] * 2
    score = hf_scorer(model, tok.pad_token_id)
    want, _, _ = score_reference(tok, score, prompts, responses, refs, [0, 1], custom)
    default, _, _ = score_reference(tok, score, prompts, responses, refs, [0, 1], SpanParams())
    assert find_spans(tok, [responses[0].tolist()], custom)[0].answer is not None  # "stops" found
    torch.testing.assert_close(out["credit_ref_logprobs"], want, rtol=0, atol=1e-6)
    assert not torch.allclose(out["credit_ref_logprobs"][0], default[0])  # default markers would differ


class ShardedWorkerGroup(SingleRankWorkerGroup):
    """verl's dp dispatch over ``shards`` ranks: contiguous chunks of keys, one worker call each."""

    def __init__(self, worker, shards=2):
        super().__init__(worker)
        self.shards, self.widths = shards, []

    def compute_credit_scores(self, batch):
        self.calls += 1
        size = -(-len(batch) // self.shards)
        for start in range(0, len(batch), size):
            keys = batch.keys[start : start + size]
            data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id)
            tu.assign_non_tensor(data, **batch.extra_info)
            output = self.worker.compute_credit_scores(data)
            self.widths.append({k: tuple(v.shape[1:]) for k, v in output.items()})
            tq.kv_batch_put(keys=keys, partition_id=batch.partition_id, fields=output)
        return batch


def test_dp_shards_write_their_own_widths(local_tq, tiny):
    """Each rank writes its own J (reference tokens): the trainer reads the rows back nested and
    pads them as absent; advantages equal the single-rank run's. S (spans) is max_spans everywhere."""
    trainer, batch, *_ = _setup(
        local_tq,
        tiny,
        "algorithm.adv_estimator=variance_weighted",
        "credit.token_weighting=counterfactual",
        truths=TRUTHS,
    )
    trainer._compute_advantage(batch, {})
    single = _read(batch, "advantages").to_padded_tensor()["advantages"]
    trainer.actor_rollout_wg = ShardedWorkerGroup(trainer.actor_rollout_wg.worker, shards=3)
    trainer._compute_advantage(batch, {})
    widths = trainer.actor_rollout_wg.widths
    assert len({w["credit_ref_logprobs"] for w in widths}) > 1  # the shards really differ in J
    assert len({w["credit_cf_scores"] for w in widths}) == 1
    torch.testing.assert_close(_read(batch, "advantages").to_padded_tensor()["advantages"], single)


def test_stage_tensors_pad_with_absent_values():
    from verl_credit.integration.tq_io import stage_tensors

    def nested(rows):
        return torch.nested.as_nested_tensor(rows, layout=torch.jagged)

    data = TensorDict(
        {
            "credit_cf_scores": nested([torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -2.0, -3.0])]),
            "credit_cf_spans": nested([torch.tensor([[0, 2]]), torch.tensor([[0, 2], [2, 4]])]),
            "credit_ref_mask": nested([torch.tensor([1]), torch.tensor([1, 1])]),
            "credit_cf_answer": torch.tensor([[3, 5], [4, 6]]),
        },
        batch_size=[2],
    )
    out = stage_tensors(data, ["credit_cf_scores", "credit_cf_spans", "credit_ref_mask", "credit_cf_answer"])
    assert torch.isnan(out["credit_cf_scores"][0, 2]) and out["credit_cf_scores"][1, 2] == -3.0
    assert out["credit_cf_spans"][0, 1].tolist() == [-1, -1]
    assert out["credit_ref_mask"].tolist() == [[1, 0], [1, 1]]
    assert out["credit_cf_answer"].tolist() == [[3, 5], [4, 6]]


def _length_expected(tiny, trainer, prompts, responses, scores, uids, rows):
    """The length reward with the counterfactual scorer computed directly: score_spans on CPU,
    core token significance, core shaping (lambda_dyn = explore at step 3)."""
    from verl_credit.core.counterfactual import token_significance
    from verl_credit.core.length_reward import DynamicLambdaSchedule, compute_length_reward

    model, tok = tiny
    cfg = trainer.credit_config
    res = score_spans(
        tok,
        hf_scorer(model, tok.pad_token_id),
        [torch.tensor(p) for p in prompts],
        [torch.tensor(r) for r in responses],
        cfg.counterfactual,
        rows=rows,
    )
    T = max(len(r) for r in responses)
    mask = torch.zeros(len(responses), T, dtype=torch.long)
    rm = torch.zeros(len(responses), T)
    for i, r in enumerate(responses):
        mask[i, : len(r)] = 1
        rm[i, len(r) - 1] = scores[i]
    significance = token_significance(res.scores, res.spans, mask)
    lambda_dyn = DynamicLambdaSchedule(cfg.length_reward).value_at(trainer.global_steps)
    out = compute_length_reward(
        significance, rm, mask, group_index_from_uids(uids), cfg.length_reward, lambda_dyn, normalize=False
    )
    return out, res, mask, significance


def test_length_reward_counterfactual_scorer(local_tq, tiny):
    trainer, batch, prompts, responses, scores, uids = _setup(
        local_tq,
        tiny,
        "algorithm.adv_estimator=grpo",
        "credit.length_reward.enabled=true",
        "credit.length_reward.scorer=counterfactual",
    )
    metrics = {}
    trainer._compute_advantage(batch, metrics)
    assert trainer.actor_rollout_wg.calls == 1
    req = _read(batch, "credit_cf_request").to_padded_tensor()["credit_cf_request"].flatten().tolist()
    # every real rollout of a group of >= 2, the all-correct group too (row 3 copies row 0); no padding
    assert req == [1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    B = len(uids)
    want, res, mask, sig = _length_expected(tiny, trainer, prompts, responses, scores, uids, rows=list(range(B)))
    got = _read(batch, "rm_scores", "credit_raw_rm_scores").to_padded_tensor()
    T = mask.shape[1]
    torch.testing.assert_close(got["rm_scores"][:B, :T].double(), want.shaped_rm_scores.double(), rtol=0, atol=1e-5)
    assert got["credit_raw_rm_scores"][:B].sum(-1).tolist() == scores
    in_span = paint_spans(torch.ones(res.spans.shape[:2]), res.spans, res.answer, 0.0, T, base=0.0) > 0
    scored = ~torch.isnan(res.scores[:, 0])
    # measured spans fall on both sides of the threshold (min-max puts the least important at 0)
    assert (sig[in_span & scored[:, None]] < 0.5).any() and (sig[in_span & scored[:, None]] >= 0.5).any()
    assert torch.isnan(res.scores[6]).all() and want.n_sig[6] == 0  # no answer: every token insignificant
    assert metrics["credit/length_reward/unscored_rollouts/count"] == 1.0
    assert metrics["credit/length_reward/unscored_correct/count"] == 0.0
    assert metrics["credit/length_reward/insignificant_tokens/mean"] > 0
    # the shaped reward reaches grpo: the all-correct group (A = 0 on the raw reward) now has contrast
    adv = _read(batch, "advantages").to_padded_tensor()["advantages"]
    z = group_outcome_advantage(want.shaped_rm_scores.double().sum(-1), group_index_from_uids(uids))
    torch.testing.assert_close(adv[:B, :T].double(), z.double()[:, None] * mask, rtol=1e-4, atol=1e-4)
    assert adv[4].abs().sum() > 0


def test_length_reward_counterfactual_scorer_with_weighting(local_tq, tiny):
    """One stage run serves both: the scorer before the shaping, the weights after it."""
    trainer, batch, prompts, responses, scores, uids = _setup(
        local_tq,
        tiny,
        "algorithm.adv_estimator=counterfactual",
        "credit.length_reward.enabled=true",
        "credit.length_reward.scorer=counterfactual",
    )
    trainer._compute_advantage(batch, {})
    assert trainer.actor_rollout_wg.calls == 1
    B = len(uids)
    want, _, mask, _ = _length_expected(tiny, trainer, prompts, responses, scores, uids, rows=list(range(B)))
    groups = group_index_from_uids(uids)
    base = group_outcome_advantage(want.shaped_rm_scores.double().sum(-1), groups).double()[:, None] * mask
    expected, w, _ = _expected(tiny, prompts, responses, scores, uids, rows=list(range(B)), base=base)
    adv = _read(batch, "advantages").to_padded_tensor()["advantages"]
    torch.testing.assert_close(adv[:B, : expected.shape[1]], expected.float(), rtol=1e-4, atol=1e-4)
    assert (w[4][mask[4].bool()] != 1).any()  # the all-correct group is weighted too (its rows were scored)


def test_length_reward_surprisal_scores_every_group_for_weighting(local_tq, tiny):
    """With the length reward on, the stage runs before the shaping, so it scores every group of >= 2."""
    trainer, batch, *_ = _setup(
        local_tq, tiny, "algorithm.adv_estimator=counterfactual", "credit.length_reward.enabled=true"
    )
    trainer._compute_advantage(batch, {})
    req = _read(batch, "credit_cf_request").to_padded_tensor()["credit_cf_request"].flatten().tolist()
    assert req == [1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0]


def test_length_reward_composes_with_variance_weighted(local_tq, tiny):
    """R3 is added to the shaped outcome: variance_weighted reads the length reward's rm_scores."""
    from verl_credit.core.variance import VarianceParams, r3_rewards

    trainer, batch, prompts, responses, scores, uids = _setup(
        local_tq,
        tiny,
        "algorithm.adv_estimator=variance_weighted",
        "credit.length_reward.enabled=true",
        "credit.length_reward.scorer=counterfactual",
        truths=TRUTHS,
    )
    trainer._compute_advantage(batch, {})
    assert trainer.actor_rollout_wg.calls == 1  # one stage run: reference log-probs and span scores
    B = len(uids)
    got = _read(batch, "rm_scores", "credit_raw_rm_scores", "advantages", "response_mask").to_padded_tensor()
    shaped = got["rm_scores"][:B].double().sum(-1)
    assert not torch.allclose(shaped, got["credit_raw_rm_scores"][:B].double().sum(-1))
    lp = _read(batch, "credit_ref_logprobs", "credit_ref_mask").to_padded_tensor()
    groups = group_index_from_uids(uids)
    res = r3_rewards(lp["credit_ref_logprobs"][:B], lp["credit_ref_mask"][:B], shaped, groups, VarianceParams())
    z = group_outcome_advantage(res.shaped.double(), groups)
    mask = got["response_mask"][:B]
    torch.testing.assert_close(got["advantages"][:B], (z[:, None] * mask).float(), rtol=1e-4, atol=1e-4)


def test_low_coverage_warns_once_with_the_reasons(local_tq, tiny, monkeypatch, caplog):
    """Issue 22 case 5: a step that scores few of the rollouts asked for logs one warning per run
    with the reasons counted by explain's coverage rules (here the threshold is raised so that 5 of
    6 is "few": row 6, "the text just stops without", has no answer marker)."""
    monkeypatch.setattr(stage_coverage, "LOW_SCORED_FRACTION", 1.0)
    trainer, batch, *_ = _setup(local_tq, tiny, "algorithm.adv_estimator=counterfactual")
    with caplog.at_level("WARNING", logger="verl_credit.integration.stage_coverage"):
        trainer._compute_advantage(batch, {})
        trainer._compute_advantage(batch, {})  # the same step again: no second warning
    warnings = [r.getMessage() for r in caplog.records if "credit.counterfactual: step" in r.getMessage()]
    assert len(warnings) == 1, warnings
    text = warnings[0]
    assert "step 3 scored 5 of the 6 rollouts" in text and "keep weight 1 on every token" in text
    assert "not scored: 1" in text and "no answer marker: 1" in text and "\n" not in text


def test_coverage_reasons_name_cut_and_answerless_rollouts(tiny):
    """All three reasons of the issue from explain's rules: no answer marker, cut at the limit, no span."""
    _, tok = tiny
    texts = ["the text just stops without", "First compute 12 * 7 = 84 and then", "#### 18"]
    ids = [tok(t)["input_ids"] + ([tok.eos_token_id] if i != 1 else []) for i, t in enumerate(texts)]
    T = max(len(r) for r in ids)
    responses = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T)
    for i, r in enumerate(ids):
        responses[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    cov = stage_coverage.StageCoverage(
        torch.ones(3, dtype=torch.bool), torch.tensor([False, False, True]), responses, mask
    )
    assert cov.metrics() == {
        "counterfactual/rollouts_scored/count": 1.0,
        "counterfactual/rollouts_scored/fraction": pytest.approx(1 / 3),
    }
    reasons = stage_coverage.coverage_reasons(tok, cov, CounterfactualConfig(), gold=False, max_new_tokens=len(ids[1]))
    assert reasons["not scored"] == 2 and reasons["answer only"] == 1
    assert reasons["no answer marker"] == 1
    assert reasons[f"cut at the token limit ({len(ids[1])} new tokens, no eos): no answer marker"] == 1
    assert any(k.startswith("no reasoning span before the answer") for k in reasons)
    none_scored = stage_coverage.StageCoverage(
        torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), responses, mask
    )
    assert (
        none_scored.low
        and not stage_coverage.StageCoverage(
            torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), responses, mask
        ).low
    )  # nothing asked (all groups uniform): nothing to warn about
