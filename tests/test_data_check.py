"""The start-up data check (verl_credit.data_check): every row, column-wise, agreeing with the loop reference.

Each bad input of issue 22's cases 3 and 4 sits in row 9 (the old check read 8 rows) and is named with
the file, the row and the fix; the vectorised codes equal ``row_problem`` row by row over random tables
of every column type; prompt lengths equal ``apply_chat_template`` on every row.
"""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_credit.data import verl_record, write_parquet
from verl_credit.data_check import DataNeeds, check_file, problem_codes, prompt_lengths, row_problem
from verl_credit.scoring import answer_ids, answer_text, reference_answer

TEACHER = DataNeeds(present="R3 reads it", scalar="R3 teacher-forces it", template="#### {answer}")
GRADED = DataNeeds(present="the reward manager reads it")
PROMPT_ONLY = DataNeeds()


def _rows(n=12, truth="4"):
    return [verl_record(f"What is {i}+2?", truth, data_source="t", split="train", index=i) for i in range(n)]


def _jsonl(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _set(rows, row, **fields):
    rows[row] = {**rows[row], **fields}
    return rows


# ----------------------------------------------------------------------------- the rows


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("What is 2+2?", r"row 9: field 'prompt' is a str \('What is 2\+2\?'\), expected a list of chat messages"),
        ([{"role": "user", "content": 12351}], r"row 9: prompt\[0\]\.content is an int \(12351\), expected a string"),
        ([{"role": "user", "content": "  "}], r"row 9: prompt\[0\]\.content is empty"),
        ([], r"row 9: field 'prompt' is an empty list of messages"),
        ([{"role": "user", "content": "hi"}, {"content": "x"}], r"row 9: prompt\[1\]\.role is None"),
        ([{"role": "user"}], r"row 9: prompt\[0\]\.content is missing"),
    ],
)
def test_a_malformed_prompt_in_row_9_is_named_with_file_row_and_fix(tmp_path, prompt, message):
    path = _jsonl(tmp_path, _set(_rows(), 9, prompt=prompt))
    with pytest.raises(ValueError, match=rf"^{path} {message}") as err:
        check_file(path, PROMPT_ONLY)
    assert "verl_record" in str(err.value) or "decode it" in str(err.value) or "drop or fix" in str(err.value)


def test_bytes_content_in_a_parquet_file_is_named(tmp_path):
    prompts = [[{"role": "user", "content": f"q{i}".encode()}] for i in range(10)]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"prompt": pa.array(prompts)}), path)
    with pytest.raises(ValueError, match=r"row 0: prompt\[0\]\.content is a bytes \(b'q0'\), expected a string") as err:
        check_file(str(path), PROMPT_ONLY)
    assert "(9 more rows of 10 have this problem)" in str(err.value)


def test_a_plain_string_prompt_column_in_parquet_is_named(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"prompt": pa.array(["a", "b"])}), path)
    with pytest.raises(ValueError, match=r"row 0: field 'prompt' is a str \('a'\), expected a list of chat messages"):
        check_file(str(path), PROMPT_ONLY)


@pytest.mark.parametrize(
    "truth, needs, message",
    [
        (float("nan"), TEACHER, r"row 9: field 'reward_model\.ground_truth' is nan; R3 reads it"),
        (float("nan"), GRADED, r"row 9: field 'reward_model\.ground_truth' is nan"),
        (None, TEACHER, r"row 9: field 'reward_model\.ground_truth' is missing \(None"),
        (2.5, TEACHER, r"row 9: field 'reward_model\.ground_truth' is the float 2\.5, expected a string or an int"),
        (["4"], TEACHER, r"row 9: field 'reward_model\.ground_truth' is a list"),
        (True, TEACHER, r"row 9: field 'reward_model\.ground_truth' is a bool"),
    ],
)
def test_a_bad_ground_truth_in_row_9_is_named(tmp_path, truth, needs, message):
    rows = [{**r, "reward_model": {"style": "rule", "ground_truth": float(i)}} for i, r in enumerate(_rows())]
    rows[9]["reward_model"] = {"style": "rule", "ground_truth": truth}
    paths = [_jsonl(tmp_path, rows)]
    if not isinstance(truth, list | bool):  # one parquet column holds one type
        paths.append(str(write_parquet(rows, tmp_path / "train.parquet")))
    for path in paths:
        if path.endswith(".parquet") and isinstance(truth, float) and math.isnan(truth):
            message = (
                r"row 9: field 'reward_model\.ground_truth' is missing \(None, or a NaN that pandas wrote as null\)"
            )
        with pytest.raises(ValueError, match=rf"^{path} {message}"):
            check_file(path, needs)


def test_integer_valued_float_truths_pass_and_are_counted(tmp_path):
    rows = [{**r, "reward_model": {"style": "rule", "ground_truth": 43.0}} for r in _rows()]
    report = check_file(str(write_parquet(rows, tmp_path / "train.parquet")), TEACHER)
    assert report.rows == 12 and report.float_truths == 12
    # nothing reads the ground truth: not checked
    rows[3]["reward_model"]["ground_truth"] = float("nan")
    assert check_file(_jsonl(tmp_path, rows), PROMPT_ONLY).rows == 12


def test_a_teacher_forced_float_answer_is_written_as_an_integer(tiny):
    _, tok = tiny
    assert answer_text(43.0) == "43" and answer_text(7) == "7" and answer_text("43.0") == "43.0"
    assert answer_text(2.5) == "2.5"
    assert answer_ids(tok, "#### {answer}", 43.0).tolist() == answer_ids(tok, "#### {answer}", "43").tolist()
    ids, mark = reference_answer(tok, "#### {answer}", 43.0)
    assert tok.decode(ids) == "#### 43" and tok.decode(ids[mark]).strip() == "43"
    for bad in (float("nan"), None, math.inf):
        with pytest.raises(ValueError, match="no reference answer to teacher-force"):
            answer_text(bad)


# ----------------------------------------------------------------------------- vectorised == loop


def _random_prompts(rng, n):
    out = []
    for _ in range(n):
        kind = rng.integers(0, 12)
        if kind == 0:
            out.append(None)
        elif kind == 1:
            out.append([])
        else:
            messages = []
            for _ in range(int(rng.integers(1, 4))):
                bad = rng.integers(0, 14)
                role = [None, "", " ", "user"][bad] if bad < 3 else ("system" if bad == 3 else "user")
                content = {4: None, 5: "", 6: " \n", 7: "x y"}.get(int(bad), f"text {bad}")
                messages.append(None if bad == 13 else {"role": role, "content": content})
            out.append(messages)
    return out


def _random_truths(rng, n, kind):
    values = {
        "str": [None, "", "  ", "4", "x"],
        "float": [None, float("nan"), math.inf, 43.0, 2.5, -1.0],
        "int": [None, 3, 0],
        "list": [None, [], ["4"], ["4", "5"]],
        "bool": [None, True, False],
    }[kind]
    return [values[int(k)] for k in rng.integers(0, len(values), size=n)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("needs", [TEACHER, GRADED, PROMPT_ONLY], ids=["teacher", "graded", "prompt"])
def test_vectorised_codes_equal_the_loop_reference(seed, needs):
    rng = np.random.default_rng(seed)
    n = 300
    for kind in ("str", "float", "int", "list", "bool"):
        models = [
            None if rng.random() < 0.05 else {"style": "rule", "ground_truth": t} for t in _random_truths(rng, n, kind)
        ]
        table = pa.table({"prompt": pa.array(_random_prompts(rng, n)), "reward_model": pa.array(models)})
        loop = [
            row_problem(p, m, needs)[0]
            for p, m in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
        ]
        codes = problem_codes(table, needs)
        assert codes.tolist() == loop, kind
        assert len(set(loop)) > 3  # the random rows hit several problems


@pytest.mark.parametrize(
    "column",
    [
        pa.array(["a", None]),
        pa.array([[1, 2], []]),
        pa.array([[{"role": "user", "content": 5}], None]),
        pa.array([[{"role": "user", "content": b"x"}], [{"role": "", "content": b""}]]),
        pa.array([[{"role": 3, "content": "x"}]]),
        pa.array([[{"text": "x"}]]),
    ],
)
def test_vectorised_codes_equal_the_loop_for_unusual_column_types(column):
    table = pa.table({"prompt": column})
    assert problem_codes(table, GRADED).tolist() == [
        row_problem(p, None, GRADED, has_reward_model=False)[0] for p in column.to_pylist()
    ]


def test_a_json_file_with_mixed_column_types_is_checked_by_the_loop(tmp_path):
    rows = _rows()
    rows[4]["reward_model"]["ground_truth"] = 7  # str and int answers: legal, not one arrow type
    rows[5]["prompt"][0]["name"], rows[6]["prompt"][0]["name"] = 5, "x"  # other message keys of mixed types
    report = check_file(_jsonl(tmp_path, rows), TEACHER)
    assert report.rows == 12
    assert report.table.column("prompt")[5].as_py() == [{"role": "user", "content": rows[5]["prompt"][0]["content"]}]
    rows[10]["prompt"] = [{"role": "user", "content": ""}]
    with pytest.raises(ValueError, match=r"row 10: prompt\[0\]\.content is empty"):
        check_file(_jsonl(tmp_path, rows), TEACHER)


# ----------------------------------------------------------------------------- prompt lengths


def test_prompt_lengths_equal_the_chat_template_on_every_row(tiny_model_dir):
    from transformers import AutoTokenizer

    from verl_credit.cpu.smoke import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHAT_TEMPLATE
    rng = np.random.default_rng(0)
    prompts = []
    for i in range(200):
        words = " ".join(["eggs", "duck", "12", "Café", "naïve"][int(k)] for k in rng.integers(0, 5, size=i))
        msgs = [{"role": "user", "content": words or "x"}]
        prompts.append([{"role": "system", "content": "be brief"}, *msgs] if i % 3 == 0 else msgs)
    table = pa.table({"prompt": pa.array(prompts)})
    exact = np.array(
        [len(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)["input_ids"]) for p in prompts]
    )
    limit = int(np.percentile(exact, 70))
    lengths, tokenized = prompt_lengths(table, "prompt", tok, limit, check_sample=16)
    over = exact > limit
    assert np.array_equal(lengths > limit, over) and over.sum() > 10
    assert np.array_equal(lengths[over], exact[over])
    assert np.all(lengths >= exact)  # rows under the limit keep their bound or their exact count
    assert tokenized < len(prompts)
