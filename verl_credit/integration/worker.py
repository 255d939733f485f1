"""The extra no-grad forward stage on the actor workers.

    CreditActorRolloutRefWorker.compute_credit_scores(data) -- registered like verl's
        ``compute_log_prob``: each actor dp rank gets its shard of the batch (from TransferQueue),
        builds the sequences to score and scores them with the actor's own engine (``infer_batch``,
        eval mode, no grad, micro-batched), and returns one row per input row. Products, as asked
        for in the batch's ``credit_stage`` entry:
          counterfactual -- span scores of the rows with ``credit_cf_request`` (see ``scoring.score_spans``);
          reference      -- log-probs of the reference answer (``reward_model.ground_truth``) after
                            the reasoning of the rows with ``credit_ref_request`` (``scoring.score_reference``).
    stage_rows(data, tokenizer, score_fn, stage) -- the shard logic, engine-free (tested on CPU).
    engine_scorer(actor, meta) -- a score function over verl's engine (one forward per sequence).
    stage_scorer(actor, meta, stage, tokenizer) -- the stage's score function: tree forwards of the
        FSDP module for counterfactual scores (``credit.counterfactual.scoring=tree``,
        ``tree_scorer.py``), ``engine_scorer`` otherwise.

Rows not asked for (padding rows, groups that need no scores, duplicates) get NaN scores / empty
masks. verl's engine runs collectives across the dp group inside ``infer_batch``, and FSDP all-gathers
inside every module forward, so every rank makes the same calls even when its shard has nothing to
score (it then scores throw-away sequences).
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict
from verl.single_controller.base.decorator import make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from verl_credit.integration.tree_scorer import EngineTreeScorer
from verl_credit.scoring import CounterfactualConfig, reference_answer, score_reference, score_spans
from verl_credit.spans import ResponseSpans, SpanParams, find_spans

__all__ = [
    "CreditActorRolloutRefWorker",
    "stage_rows",
    "engine_scorer",
    "stage_scorer",
    "dp_padded_count",
    "stage_input_fields",
    "STAGE_KEY",
    "reference_ids",
]

# non-tensor entry of the batch: {"counterfactual": dict | None, "reference": dict | None, "span_params": dict}
STAGE_KEY = "credit_stage"
META_KEYS = ("temperature",)


def stage_input_fields(stage: dict) -> list[str]:
    """The batch fields :func:`stage_rows` reads for the products in ``stage`` (a ``STAGE_KEY`` entry).

    verl's dispatch hands a worker only the fields its ``KVBatchMeta`` lists, so the trainer
    dispatches a meta with exactly these."""
    fields = ["prompts", "responses", "response_mask"]
    cf, ref = stage.get("counterfactual"), stage.get("reference")
    if cf is not None:
        fields.append("credit_cf_request")
    if ref is not None:
        fields.append("credit_ref_request")
    if ref is not None or (cf is not None and cf.get("answer_source") == "gold"):
        fields.append("reward_model")
    return fields


def _rows(nested: torch.Tensor) -> list[torch.Tensor]:
    return list(nested.unbind()) if nested.is_nested else [row for row in nested]


def _request(data: TensorDict, key: str, n: int) -> torch.Tensor:
    value = data[key]
    return (value.to_padded_tensor(0) if value.is_nested else value).reshape(n, -1)[:, 0].bool()


def reference_ids(tokenizer, reward_model, template: str, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, is_answer) of ``template`` filled with ``reward_model["ground_truth"]``
    (``scoring.reference_answer``: is_answer marks the answer's own tokens); ValueError if missing."""
    truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if truth is None or (isinstance(truth, str) and not truth.strip()):
        raise ValueError(
            f"rollout {row}: field 'reward_model.ground_truth' is missing or empty; the variance-weighted "
            "reward and credit.counterfactual.answer_source=gold teacher-force the reference answer from the data"
        )
    return reference_answer(tokenizer, template, truth)


def _references(
    data: TensorDict, tokenizer, rows: list[int], template: str, n: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Reference answer ids of ``rows`` and their is-answer masks (empty for the other rows), from
    ``reward_model.ground_truth``."""
    models = data.get("reward_model").tolist() if rows else []
    refs = [torch.zeros(0, dtype=torch.long)] * n
    marks = [torch.zeros(0, dtype=torch.bool)] * n
    for row in rows:
        refs[row], marks[row] = reference_ids(tokenizer, models[row], template, row)
    return refs, marks


def stage_rows(data: TensorDict, tokenizer, score_fn, stage: dict) -> TensorDict:
    """Stage output for one shard, one row per input row.

    Reads ``prompts``, ``responses``, ``response_mask`` (nested or padded) and, per product,
    ``credit_cf_request`` / ``credit_ref_request`` and ``reward_model``. Writes
    counterfactual: credit_cf_scores (n, S+1), credit_cf_spans (n, S, 2), credit_cf_answer (n, 2);
    reference: credit_ref_logprobs (n, J), credit_ref_mask (n, J) (1 on the answer's own tokens, not the template);
    credit_stage_tokens (n, 2) = (forward tokens, naive tokens), attributed to the shard's first row.
    """
    n = data.batch_size[0]
    prompts = _rows(data["prompts"])
    masks = _rows(data["response_mask"])
    responses = [r[: int(m.sum())] for r, m in zip(_rows(data["responses"]), masks, strict=True)]
    out, tokens = {}, torch.zeros(n, 2, dtype=torch.long)
    # one answer/span detection for both products, with the run's ``credit.counterfactual`` span settings,
    # on the requested rows only (decoding is per-row CPU work); the others get no spans and no answer
    span_params = SpanParams(**stage["span_params"]) if stage.get("span_params") else SpanParams()
    wanted = torch.zeros(n, dtype=torch.bool)
    for product, key in (("counterfactual", "credit_cf_request"), ("reference", "credit_ref_request")):
        if stage.get(product) is not None:
            wanted |= _request(data, key, n)
    rows = wanted.nonzero().flatten().tolist()
    spans = [ResponseSpans(answer=None, spans=[], kinds=[], length=int(r.numel())) for r in responses]
    for row, found in zip(rows, find_spans(tokenizer, [responses[r].tolist() for r in rows], span_params), strict=True):
        spans[row] = found
    if stage.get("counterfactual") is not None:
        config = CounterfactualConfig(**stage["counterfactual"])
        rows = _request(data, "credit_cf_request", n).nonzero().flatten().tolist()
        gold = None
        if config.answer_source == "gold":
            gold, _ = _references(data, tokenizer, rows, config.gold_template, n)
        res = score_spans(tokenizer, score_fn, prompts, responses, config, rows=rows, gold_answers=gold, spans=spans)
        out.update(credit_cf_scores=res.scores, credit_cf_spans=res.spans, credit_cf_answer=res.answer)
        if n:
            tokens[0] += torch.tensor([res.forward_tokens, res.naive_tokens])
    if stage.get("reference") is not None:
        rows = _request(data, "credit_ref_request", n).nonzero().flatten().tolist()
        refs, marks = _references(data, tokenizer, rows, stage["reference"]["answer_template"], n)
        logprobs, mask, forward = score_reference(
            tokenizer, score_fn, prompts, responses, refs, rows, spans=spans, answer_masks=marks
        )
        out.update(credit_ref_logprobs=logprobs, credit_ref_mask=mask)
        if n:
            naive = sum(prompts[r].numel() + responses[r].numel() for r in rows)
            tokens[0] += torch.tensor([forward, naive])
    out["credit_stage_tokens"] = tokens
    return TensorDict(out, batch_size=[n])


def dp_padded_count(n: int, group=None, multiple: int = 1) -> int:
    """The sequence count every rank of the dp ``group`` sends to ``infer_batch``: the largest ``n``
    across the group (an all-reduce; ``n`` itself outside torch.distributed), rounded up to a
    multiple of ``multiple`` and at least 1.

    Why: ``infer_batch`` runs dp collectives. With ``use_dynamic_bsz`` verl takes the largest
    micro-batch count across ranks and refuses a rank with fewer sequences than that count
    (``utils/seqlen_balancing.py``); with fixed micro-batches it asserts that the count divides
    the micro-batch size (``workers/engine/utils.py``) and ranks with different micro-batch counts
    would hang in FSDP's all-gathers. Equal counts, multiples of the micro-batch size, satisfy both.
    """
    count = max(int(n), 1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([count], dtype=torch.long)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=group)
        count = int(t)
    return -(-count // multiple) * multiple


def engine_scorer(actor, meta: dict):
    """Score function over verl's engine: variants become rows of the shape ``compute_log_prob``
    takes (nested input_ids / position_ids / loss_mask); ``log_probs`` comes back nested over the
    full sequence, position t holding log p(x_{t+1} | x_<=t), computed with the run's
    ``rollout.temperature`` (``meta["temperature"]``) like verl's ``old_log_probs``.

    Every rank of the dp group sends the same number of sequences (:func:`dp_padded_count`), padding
    with two-token throw-away sequences whose outputs are dropped."""

    def score(sequences: list[torch.Tensor], targets: torch.Tensor) -> list[torch.Tensor]:
        real = len(sequences)
        sequences, targets = list(sequences), targets.reshape(-1, 2)
        engine = getattr(actor, "engine", None)
        group = engine.get_data_parallel_group() if engine is not None else None
        engine_config = getattr(actor, "engine_config", None)  # TrainingWorker's resolved engine config
        fixed = engine_config is not None and not engine_config.use_dynamic_bsz
        multiple = int(engine_config.infer_micro_batch_size_per_gpu) if fixed else 1
        total = dp_padded_count(real, group, multiple)
        if total > real:
            pad = total - real
            sequences += [torch.zeros(2, dtype=torch.long)] * pad
            targets = torch.cat([targets.long(), torch.tensor([[1, 2]] * pad)])
        loss_masks = []
        for seq, (t0, t1) in zip(sequences, targets.tolist(), strict=True):
            mask = torch.zeros_like(seq)
            mask[t0:t1] = 1
            loss_masks.append(mask)
        td = tu.get_tensordict(
            {
                "input_ids": torch.nested.as_nested_tensor(sequences, layout=torch.jagged),
                "position_ids": torch.nested.as_nested_tensor(
                    [torch.arange(s.numel()) for s in sequences], layout=torch.jagged
                ),
                "loss_mask": torch.nested.as_nested_tensor(loss_masks, layout=torch.jagged),
            },
            non_tensor_dict={"calculate_entropy": False, "compute_loss": False, **meta},
        )
        output = actor.infer_batch(td)
        if output is None:  # not the rank that holds outputs in a model-parallel group
            return [torch.zeros(int(t1 - t0)) for t0, t1 in targets.tolist()][:real]
        log_probs = _rows(output["log_probs"])
        return [lp[t0 - 1 : t1 - 1].float().cpu() for lp, (t0, t1) in zip(log_probs, targets.tolist(), strict=True)][
            :real
        ]

    return score


class CreditActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's actor/rollout/ref worker plus verl_credit's scoring stage."""

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_credit_scores(self, data: TensorDict) -> TensorDict:
        meta = {k: tu.get(data, key=k) for k in META_KEYS if tu.get(data, key=k) is not None}
        tokenizer = self.actor.model_config.tokenizer
        stage = tu.get(data, key=STAGE_KEY)
        return stage_rows(data, tokenizer, stage_scorer(self.actor, meta, stage, tokenizer), stage)


def stage_scorer(actor, meta: dict, stage: dict, tokenizer):
    """The score function of the stage: tree forwards of the FSDP module for the counterfactual
    product when ``credit.counterfactual.scoring=tree`` (``tree_scorer.EngineTreeScorer``), verl's
    engine for everything else."""
    naive = engine_scorer(actor, meta)
    cf = stage.get("counterfactual")
    if cf is None or cf.get("scoring", "tree") != "tree":
        return naive
    return EngineTreeScorer(actor, meta, cf["max_batch_tokens"], getattr(tokenizer, "pad_token_id", None), naive)


def config_dict(config) -> dict:
    """A config dataclass as plain data, to travel in the batch's extra_info."""
    return dataclasses.asdict(config)
