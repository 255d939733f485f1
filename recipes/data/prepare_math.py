"""Write MATH in verl's parquet format: ``OUT/train.parquet`` (MATH, levels 3-5 by default: the KTAE
paper's training set) and ``OUT/test.parquet`` (MATH-500, all levels).

    python recipes/data/prepare_math.py --out ~/data/math                   # from the hub
    python recipes/data/prepare_math.py --out ~/data/math --jsonl test=../shared/data/math500_test.jsonl

Hub sources: train = DigitalLearningGmbH/MATH-lighteval (7,500 problems; ground truth = the last
``\\boxed{}`` of the solution), test = HuggingFaceH4/MATH-500 (its ``answer`` field). A local jsonl
needs ``problem`` and ``answer`` or a boxed ``solution``; ``level`` (3 or "Level 3") for filtering.
"""

from __future__ import annotations

import argparse
import sys

from verl_credit.data import (
    DEFAULT_INSTRUCTION,
    MATH500_SOURCE,
    MATH_TRAIN_SOURCE,
    math_records,
    read_split_files,
    write_parquet,
)


def _levels(text: str) -> list[int] | None:
    return None if text in ("", "all") else [int(x) for x in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--jsonl", action="append", default=[], metavar="SPLIT=PATH", help="local jsonl per split")
    parser.add_argument("--train-levels", default="3,4,5", help="levels kept in train ('all' for every level)")
    parser.add_argument("--test-levels", default="all", help="levels kept in test")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="appended to every problem")
    args = parser.parse_args(argv)
    levels = {"train": _levels(args.train_levels), "test": _levels(args.test_levels)}
    if args.jsonl:
        try:
            splits = read_split_files(args.jsonl)
        except ValueError as err:
            parser.error(str(err))
        sources = {
            split: (rows, MATH500_SOURCE if split == "test" else MATH_TRAIN_SOURCE) for split, rows in splits.items()
        }
    else:
        from datasets import load_dataset  # only for the hub; needs network access

        sources = {
            "train": (list(load_dataset(MATH_TRAIN_SOURCE, split="train")), MATH_TRAIN_SOURCE),
            "test": (list(load_dataset(MATH500_SOURCE, split="test")), MATH500_SOURCE),
        }
    for split, (rows, source) in sources.items():
        records = math_records(rows, split, levels.get(split), args.instruction, data_source=source)
        path = write_parquet(records, f"{args.out}/{split}.parquet")
        print(f"{split}: {len(records)} of {len(rows)} problems -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
