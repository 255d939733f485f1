"""Shared fixtures: the offline tiny Qwen2 model and tokenizer, and the shared data folder."""

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``tools/test.sh``: -n 2 --dist loadgroup) every test in tests/integration
    runs on one worker: they share one in-process Ray session and start verl runs that would compete."""
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.xdist_group("verl"))


def _gsm8k_rows(limit=None):
    """GSM8K test rows from ../shared/data, or skip the test when the folder is absent."""
    path = DATA / "gsm8k_test.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is absent (test data lives beside the checkout, not in it)")
    rows = [json.loads(line) for line in path.open()]
    return rows[:limit] if limit else rows


CORPUS = [
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day.\n#### 18",
    "It takes 2/2=1 bolt of white fiber. So the total is 2+1=3 bolts.\nThe final answer is 3",
    "First compute 12 * 7 = 84. Then add the remaining 16 apples to get 100. \\boxed{100}",
    "Café crème costs €3.50 — naïve résumé! Why? Because 3.5 + 1.5 = 5 euros in total.",
] * 20


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from verl_credit.testing import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"), CORPUS, vocab_size=320)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer): random tiny Qwen2 and its BPE, reloaded from disk like a real model."""
    from verl_credit.testing import load_tiny

    return load_tiny(tiny_model_dir)


@pytest.fixture(scope="session")
def gsm8k():
    """The first 300 GSM8K test rows (skips without ../shared/data)."""
    return _gsm8k_rows(300)


@pytest.fixture(scope="session")
def gsm8k_tokenizer(tmp_path_factory):
    """A Qwen2-style tokenizer trained on GSM8K text (skips without the data)."""
    from transformers import AutoTokenizer

    from verl_credit.testing import build_tiny_qwen2

    rows = _gsm8k_rows(300)
    corpus = [r["question"] + "\n" + r["answer"] for r in rows]
    path = build_tiny_qwen2(tmp_path_factory.mktemp("gsm8k_tok"), corpus, vocab_size=600)
    return AutoTokenizer.from_pretrained(path)
