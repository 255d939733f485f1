"""The scoring stage through verl's real FSDP engine in one process, against a plain forward.

    python tests/gpu/engine_stage_check.py --device cuda [--cases fp32_rmpad,fp32_padded,bf16_rmpad]
    python tests/gpu/engine_stage_check.py --device cpu   (verl_credit.cpu's platform; how it is tried here)

Builds a tiny random Qwen2 offline, composes verl's ppo_trainer.yaml, runs
``CreditActorRolloutRefWorker(role="actor").init_model()`` at world size 1 (verl's TrainingWorker ->
EngineRegistry -> FSDP engine, minus Ray), hands ``compute_credit_scores`` one shard shaped as verl's
tqbridge hands it (the fields ``worker.stage_input_fields`` lists, the stage settings and
temperature 1 as non-tensor entries), and compares its span scores and reference log-probs with
``worker.stage_rows`` over ``scoring.hf_scorer`` (fp32, same model weights).

Prints one ``CASE name: ok|MISMATCH max|cf diff|=... max|ref diff|=...`` line per case and a last
``PASS``/``FAIL`` line over the fp32 cases (bf16 cases are reported, with a loose bound). Exit 0 on PASS.
The environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT, and on CPU verl_credit.cpu's variables) is set
by :func:`main` before verl is imported.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time

CORPUS = [
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day.\n#### 18",
    "It takes 2/2=1 bolt of white fiber. So the total is 2+1=3 bolts.\nThe final answer is 3",
    "First compute 12 * 7 = 84. Then add the remaining 16 apples to get 100. \\boxed{100}",
] * 20
TEXTS = [
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day.\n#### 18",
    "It takes 2/2=1 bolt of white fiber. So the total is 2+1=3 bolts.\n#### 3",
    "First compute 12 * 7 = 84. Then add the remaining 16 apples to get 100. #### 100",
    "the text just stops without",
    "She makes 9 * 2 = $18 every day. Then 12 * 7 = 84 apples.\n#### 84",
]
TRUTHS = ["18", "3", "100", "7", "84"]
CASES = {  # name: (use_remove_padding, fp32, tolerance in nats, credit.counterfactual.scoring)
    "fp32_rmpad": (True, True, 1e-4, "tree"),
    "fp32_rmpad_naive": (True, True, 1e-4, "naive"),
    "fp32_padded": (False, True, 1e-4, "tree"),
    "bf16_rmpad": (True, False, 0.5, "tree"),
    "bf16_rmpad_naive": (True, False, 0.5, "naive"),
}


def _compose(model_dir: str, device: str, rmpad: bool, fp32: bool):
    import verl
    from hydra import compose, initialize_config_dir

    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        f"actor_rollout_ref.model.use_remove_padding={str(rmpad).lower()}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.use_dynamic_bsz=true",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096",
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=4096",
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.temperature=0.7",  # the stage scores at temperature 1 regardless
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
        "actor_rollout_ref.actor.optim.total_training_steps=1",
        "data.train_batch_size=2",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        f"trainer.device={device}",
    ]
    if fp32:
        overrides.append("+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32}")
    with initialize_config_dir(
        config_dir=os.path.join(os.path.dirname(verl.__file__), "trainer", "config"), version_base=None
    ):
        return compose(config_name="ppo_trainer", overrides=overrides)


def _shard(tok, stage: dict):
    import torch
    from verl.utils import tensordict_utils as tu

    from verl_credit.integration.scoring_stage import STAGE_TEMPERATURE
    from verl_credit.integration.worker import STAGE_KEY, stage_input_fields

    prompts = [torch.tensor(tok(f"Q{i}: how many?")["input_ids"]) for i in range(len(TEXTS))]
    responses = [torch.tensor(tok(t)["input_ids"] + [tok.eos_token_id]) for t in TEXTS]
    nested = lambda xs: torch.nested.as_nested_tensor(list(xs), layout=torch.jagged)  # noqa: E731
    fields = {
        "prompts": nested(prompts),
        "responses": nested(responses),
        "response_mask": nested(torch.ones_like(r) for r in responses),
        "credit_cf_request": torch.tensor([1, 1, 1, 0, 1]).unsqueeze(1),
        "credit_ref_request": torch.ones(len(TEXTS), 1, dtype=torch.long),
        "reward_model": [{"ground_truth": t} for t in TRUTHS],
    }
    assert set(fields) == set(stage_input_fields(stage)), "the shard must hold what verl's dispatch sends"
    return tu.get_tensordict(fields, non_tensor_dict={STAGE_KEY: stage, "temperature": STAGE_TEMPERATURE})


def _max_diff(a, b, mask=None) -> float:
    import torch

    a, b = a.double(), b.double()
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    if (torch.isnan(a) ^ torch.isnan(b)).any():
        return math.inf
    d = (a - b).abs()[~torch.isnan(a)]
    return float(d.max()) if d.numel() else 0.0


def run_case(name: str, device: str, model_dir: str, tok, hf_model) -> bool:
    import torch

    from verl_credit.integration.worker import CreditActorRolloutRefWorker, config_dict, stage_rows
    from verl_credit.scoring import CounterfactualConfig, hf_scorer
    from verl_credit.spans import span_params_of

    rmpad, fp32, tol, scoring = CASES[name]
    cf = CounterfactualConfig(answer_source="gold", scoring=scoring)
    stage = {
        "counterfactual": config_dict(cf),
        "reference": {"answer_template": "#### {answer}"},
        "span_params": span_params_of(cf),
    }
    # the reference: one plain forward per sequence (naive), whatever the case scores with
    naive_stage = {**stage, "counterfactual": config_dict(CounterfactualConfig(answer_source="gold", scoring="naive"))}
    start = time.time()
    worker = CreditActorRolloutRefWorker(
        config=_compose(model_dir, device, rmpad, fp32).actor_rollout_ref, role="actor"
    )
    worker.init_model()
    t_init = time.time() - start
    start = time.time()
    out = worker.compute_credit_scores(_shard(tok, stage))
    t_stage = time.time() - start
    ref = stage_rows(_shard(tok, naive_stage), tok, hf_scorer(hf_model, tok.pad_token_id), naive_stage)
    d_cf = _max_diff(out["credit_cf_scores"], ref["credit_cf_scores"])
    d_ref = _max_diff(out["credit_ref_logprobs"], ref["credit_ref_logprobs"], ref["credit_ref_mask"])
    same = all(torch.equal(out[k], ref[k]) for k in ("credit_cf_spans", "credit_cf_answer", "credit_ref_mask"))
    scored = int((~torch.isnan(out["credit_cf_scores"][:, 0])).sum())
    # forward tokens of the whole stage (counterfactual + reference) against the naive reference's
    ratio = float(out["credit_stage_tokens"][:, 0].sum()) / float(ref["credit_stage_tokens"][:, 0].sum())
    shared = ratio < 0.8 if scoring == "tree" else abs(ratio - 1) < 1e-9  # the tree forward really ran
    ok = d_cf <= tol and d_ref <= tol and same and scored > 0 and shared
    print(
        f"CASE {name}: {'ok' if ok else 'MISMATCH'} max|cf diff|={d_cf:.3e} max|ref diff|={d_ref:.3e} tol={tol:g} "
        f"spans/answer/mask equal={same} rows scored={scored} stage tokens vs naive={ratio:.3f} "
        f"init {t_init:.1f}s stage {t_stage:.2f}s",
        flush=True,
    )
    del worker
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--cases", default=None, help="comma-separated; default: every case the device supports")
    parser.add_argument("--work", default="/tmp/verl_credit_engine_check")
    args = parser.parse_args(argv)
    cases = args.cases.split(",") if args.cases else [c for c in CASES if args.device == "cuda" or CASES[c][1]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.device == "cpu":
        from verl_credit.cpu import activate

        activate()
    import torch

    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 cases compare within 1e-4 nats
        torch.backends.cudnn.allow_tf32 = False
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_credit.testing import build_tiny_qwen2

    model_dir = os.path.join(args.work, "tiny_qwen2")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        build_tiny_qwen2(model_dir, CORPUS, vocab_size=320, hidden=64, layers=2, heads=4, seed=0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    hf_model = hf_model.to(args.device).eval()
    results = {}
    for name in cases:
        try:
            results[name] = run_case(name, args.device, model_dir, tok, hf_model)
        except Exception as err:  # noqa: BLE001  (one case's failure is reported, the others still run)
            import traceback

            traceback.print_exc()
            print(f"CASE {name}: ERROR {type(err).__name__}: {str(err)[:300]}", flush=True)
            results[name] = False
    required = [n for n in results if CASES[n][1]]
    verdict = "PASS" if required and all(results[n] for n in required) else "FAIL"
    print(f"{verdict}: device {args.device}, results {results}", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
