"""Write GSM8K in verl's parquet format: ``OUT/train.parquet`` and ``OUT/test.parquet``.

    python recipes/data/prepare_gsm8k.py --out ~/data/gsm8k                  # from the hub (openai/gsm8k)
    python recipes/data/prepare_gsm8k.py --out ~/data/gsm8k --jsonl test=../shared/data/gsm8k_test.jsonl

Each row: ``prompt`` = one user turn (question + instruction), ``reward_model.ground_truth`` = the
number after ``####``, ``data_source`` = "openai/gsm8k", ``extra_info`` = split, index, question,
solution. The recipes grade with ``pkg://verl_credit.rewards`` (math-verify).
"""

from __future__ import annotations

import argparse
import sys

from verl_credit.data import DEFAULT_INSTRUCTION, gsm8k_records, read_split_files, write_parquet


def _sources(args) -> dict[str, list[dict]]:
    if args.jsonl:
        return read_split_files(args.jsonl)
    from datasets import load_dataset  # only for the hub; needs network access

    data = load_dataset(args.hf_name, "main")
    return {split: list(data[split]) for split in ("train", "test")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--jsonl", action="append", default=[], metavar="SPLIT=PATH", help="local jsonl per split")
    parser.add_argument("--hf-name", default="openai/gsm8k", help="hub dataset when no --jsonl is given")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="appended to every question")
    args = parser.parse_args(argv)
    try:
        sources = _sources(args)
    except ValueError as err:
        parser.error(str(err))
    for split, rows in sources.items():
        path = write_parquet(gsm8k_records(rows, split, args.instruction), f"{args.out}/{split}.parquet")
        print(f"{split}: {len(rows)} problems -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
