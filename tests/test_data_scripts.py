"""recipes/data/prepare_*.py convert ../shared/data into verl's parquet format, readable by verl's dataset.

Skipped when ../shared/data (beside the checkout) is absent.
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
GSM8K, MATH500 = DATA / "gsm8k_test.jsonl", DATA / "math500_test.jsonl"


def _need(path: Path) -> list[dict]:
    if not path.exists():
        pytest.skip(f"{path} is absent (test data lives beside the checkout, not in it)")
    return [json.loads(line) for line in path.open()]


def _prepare(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "data" / script), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def gsm8k_parquet(tmp_path_factory):
    rows = _need(GSM8K)
    out = tmp_path_factory.mktemp("gsm8k")
    log = _prepare("prepare_gsm8k.py", "--out", str(out), "--jsonl", f"test={GSM8K}")
    assert f"test: {len(rows)} problems" in log
    return rows, out / "test.parquet"


def test_gsm8k_rows_follow_verl_format(gsm8k_parquet):
    rows, path = gsm8k_parquet
    df = pd.read_parquet(path)
    assert len(df) == len(rows) == 1319
    assert set(df.columns) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    for i in (0, 1, 500, len(rows) - 1):
        row, src = df.iloc[i], rows[i]
        last_line = src["answer"].strip().splitlines()[-1]
        assert last_line.startswith("#### ")
        assert row["reward_model"]["ground_truth"] == last_line[5:].replace(",", "").strip()
        assert row["data_source"] == "openai/gsm8k" and row["reward_model"]["style"] == "rule"
        (turn,) = list(row["prompt"])
        assert turn["role"] == "user" and turn["content"].startswith(src["question"])
        assert "\\boxed{}" in turn["content"]
        assert row["extra_info"]["index"] == i and row["extra_info"]["split"] == "test"
    assert df.iloc[0]["reward_model"]["ground_truth"] == "18"
    truths = [r["ground_truth"] for r in df["reward_model"]]
    assert all(float(t) == float(t) for t in truths), "every GSM8K ground truth is a plain number"


def test_math500_keeps_answers_and_filters_levels(tmp_path):
    rows = _need(MATH500)
    _prepare("prepare_math.py", "--out", str(tmp_path), "--jsonl", f"test={MATH500}", "--jsonl", f"train={MATH500}")
    test = pd.read_parquet(tmp_path / "test.parquet")
    train = pd.read_parquet(tmp_path / "train.parquet")
    assert len(test) == len(rows) == 500
    assert [r["ground_truth"] for r in test["reward_model"]] == [r["answer"] for r in rows]
    hard = [r for r in rows if r["level"] in (3, 4, 5)]  # the KTAE paper's training levels (default)
    assert len(train) == len(hard) and 0 < len(hard) < len(rows)
    assert [r["question"] for r in train["extra_info"]] == [r["problem"] for r in hard]
    assert set(test["data_source"]) == {"HuggingFaceH4/MATH-500"}


def test_verl_dataset_reads_the_parquet(gsm8k_parquet, tiny):
    """verl's own RLHFDataset loads the file: chat prompt, ground truth and data source come through."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    _, path = gsm8k_parquet
    tokenizer = copy.deepcopy(tiny[1])
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    config = OmegaConf.create({"max_prompt_length": 4096, "filter_overlong_prompts": False, "truncation": "error"})
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tokenizer, config=config)
    assert len(dataset) == 1319
    item = dataset[0]
    assert item["reward_model"]["ground_truth"] == "18" and item["data_source"] == "openai/gsm8k"
    assert "Janet" in item["raw_prompt"][0]["content"]
