"""Start-up check of a verl data file: every row's prompt and ``reward_model``, read column-wise.

Public API:
    DataNeeds                       what the run reads from each row (prompt key, why a ground truth is needed)
    read_columns(path, needs)       (pyarrow Table of the prompt / reward_model columns, rows as dicts or None)
    problem_codes(table, needs)     vectorised: IntArray[N] code of each row's first problem (0 = fine)
    row_problem(prompt, rm, needs)  the loop reference: (code, message) of one row's first problem
    check_file(path, needs)         ValueError naming the file, the row and the fix; returns a FileReport
    prompt_lengths(table, ...)      prompt token counts as verl's chat template renders them (exact where it matters)
    PROBLEMS                        code -> short name, in the order the checks run

What a row must hold (verl's RLHFDataset and agent loop read it; the issue behind this is #22):
    prompt:        a non-empty list of chat messages {"role": <non-empty str>, "content": <non-empty str>}
                   (a plain string, bytes or integer content, an empty list or empty content are rendered
                   by the chat template as text such as "user: b'\\xff...'" and trained on)
    reward_model:  when ``DataNeeds.present``: a mapping whose ``ground_truth`` is present, not empty, not NaN;
                   when ``DataNeeds.scalar`` (the answer is teacher-forced or graded as text): one string or
                   an integer-valued number (43.0 is written "43", see ``verl_credit.scoring.answer_text``).

Speed: a parquet file is checked with pyarrow compute over whole columns (flattened message lists,
``list_parent_indices``), no Python loop over rows; a JSON file is parsed row by row (json) and
checked by the loop reference (a JSON column may mix types, which pyarrow would coerce).
The first bad row is described by :func:`row_problem` on that row, so both paths word it alike.
Rows are numbered from 0, in file order (verl's dataset index).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DataNeeds",
    "FileReport",
    "PROBLEMS",
    "read_columns",
    "problem_codes",
    "row_problem",
    "check_file",
    "prompt_lengths",
]

# code -> name; codes are ordered as the checks run, 0 = no problem
PROBLEMS = {
    1: "prompt missing",
    2: "prompt not a list",
    3: "prompt empty",
    4: "message not a mapping",
    5: "role bad",
    6: "content missing",
    7: "content not a string",
    8: "content empty",
    9: "reward_model missing",
    10: "reward_model not a mapping",
    11: "ground_truth missing",
    12: "ground_truth empty",
    13: "ground_truth not finite",
    14: "ground_truth not one answer",
    15: "ground_truth not integer-valued",
}
_FIRST_RM_CODE = 9
REWARD_MODEL_FIX = "write reward_model={'style': 'rule', 'ground_truth': <the answer>} in every row"
FORMAT_FIX = "write every row as prompt=[{'role': 'user', 'content': '<text>'}] (verl_credit.data.verl_record does)"


@dataclass
class DataNeeds:
    """prompt_key: ``data.prompt_key``. present / scalar: why ``reward_model.ground_truth`` must be
    present and not empty / one string or integer-valued number (None where nothing needs it).
    template: how a teacher-forced ground truth is written (shown in the message), or None."""

    prompt_key: str = "prompt"
    present: str | None = None
    scalar: str | None = None
    template: str | None = None


@dataclass
class FileReport:
    """rows: rows read; float_truths: rows whose ground truth is a float (integer-valued: written as an
    integer); table: the prompt (and, for parquet, reward_model) columns read."""

    rows: int
    float_truths: int = 0
    table: pa.Table | None = None


# ----------------------------------------------------------------------------- reading


def read_columns(path: str, needs: DataNeeds) -> tuple[pa.Table | None, list | None, list[str]]:
    """(table, rows, fields) of a verl data file: a parquet file gives ``table``, its prompt and
    ``reward_model`` columns (those present), and rows None; a JSON file gives table None and
    ``rows`` as parsed (pyarrow would coerce a JSON column that mixes types, True into 1.0).
    ``fields``: the column names (of the first row, for JSON). ValueError naming the file (and the
    line) when it cannot be read."""
    suffix = Path(path).suffix.lower()
    wanted = [needs.prompt_key, "reward_model"]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            fields = pq.read_schema(path).names
            table = pq.read_table(path, columns=[c for c in wanted if c in fields])
        except Exception as err:  # pyarrow raises several types for a broken file
            raise ValueError(f"{path}: not a readable parquet file ({err})") from err
        return table, None, fields
    if suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: verl reads .parquet, .json and .jsonl data files, not {suffix or 'no suffix'}")
    rows = _read_json_rows(path)
    fields = sorted({str(k) for row in rows[:1] for k in row})
    return None, rows, fields


def _read_json_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        head = f.read(1).lstrip() or f.read(4096).lstrip()[:1]
        f.seek(0)
        if head == "[":
            try:
                rows = list(json.load(f))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from err
        else:
            rows = []
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {number}: not valid JSON ({err.msg})") from err
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path} row {i}: a row must be a mapping of fields, got {type(row).__name__}")
    return rows


# ----------------------------------------------------------------------------- the loop reference


def _empty(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | dict):
        return len(value) == 0
    return False


def _a(value) -> str:
    """ "a str", "an int": the article and the type name of ``value``."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _text(value, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def row_problem(prompt, reward_model, needs: DataNeeds, *, has_reward_model: bool = True) -> tuple[int, str]:
    """(code, message) of the first problem of one row (``PROBLEMS``), or (0, "") when it is fine.

    The loop reference of :func:`problem_codes`, and the wording of every row error."""
    key = needs.prompt_key
    if prompt is None:
        return 1, f"field {key!r} is missing (None); {FORMAT_FIX}"
    if not isinstance(prompt, list | tuple):
        return 2, (f"field {key!r} is {_a(prompt)} ({_text(prompt)}), expected a list of chat messages; {FORMAT_FIX}")
    if len(prompt) == 0:
        return 3, f"field {key!r} is an empty list of messages; {FORMAT_FIX}"
    for m, message in enumerate(prompt):
        where = f"{key}[{m}]"
        if not isinstance(message, dict):
            return 4, f"{where} is {_a(message)} ({_text(message)}), expected a mapping; {FORMAT_FIX}"
        role = message.get("role")
        if not (isinstance(role, str) and role.strip()):
            return 5, f"{where}.role is {_text(role)}, expected a non-empty string such as 'user'; {FORMAT_FIX}"
        content = message.get("content")
        if content is None:
            return 6, f"{where}.content is missing (None); {FORMAT_FIX}"
        if not isinstance(content, str):
            return 7, (
                f"{where}.content is {_a(content)} ({_text(content)}), expected a string "
                f"(the chat template would render it as {_text(str(content))}); decode it to text"
            )
        if not content.strip():
            return 8, f"{where}.content is empty; the model would be prompted with nothing: drop or fix the row"
    if not needs.present:
        return 0, ""
    if not has_reward_model or reward_model is None:
        return 9, f"field 'reward_model' is missing; {needs.present}: {REWARD_MODEL_FIX}"
    if not isinstance(reward_model, dict):
        return 10, (f"field 'reward_model' is {_a(reward_model)}, expected a mapping with a 'ground_truth' key")
    truth = reward_model.get("ground_truth")
    if truth is None:
        return (
            11,
            f"field 'reward_model.ground_truth' is missing (None, or a NaN that pandas wrote as null); {needs.present}",
        )
    if isinstance(truth, float) and not math.isfinite(truth):
        return 13, f"field 'reward_model.ground_truth' is {truth!r}; {needs.present}: write the answer"
    if _empty(truth):
        return 12, f"field 'reward_model.ground_truth' is empty; {needs.present}"
    if not needs.scalar:
        return 0, ""
    if isinstance(truth, bool) or not isinstance(truth, str | int | float):
        shown = f", which gives {needs.template.format(answer=truth)!r}" if needs.template else ""
        return 14, (
            f"field 'reward_model.ground_truth' is {_a(truth)} ({_text(truth)}), expected one "
            f"answer as a string or a number; {needs.scalar}{shown}"
        )
    if isinstance(truth, float) and not truth.is_integer():
        return 15, (
            f"field 'reward_model.ground_truth' is the float {truth!r}, expected a string or an integer-valued "
            f"number; {needs.scalar}: write it as the string you want scored (e.g. {str(truth)!r})"
        )
    return 0, ""


def _loop_codes(prompts: list, models: list, needs: DataNeeds, has_reward_model: bool) -> np.ndarray:
    return np.array(
        [row_problem(p, m, needs, has_reward_model=has_reward_model)[0] for p, m in zip(prompts, models, strict=True)],
        dtype=np.int64,
    ).reshape(-1)


# ----------------------------------------------------------------------------- vectorised


def _array(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _mask(arr) -> np.ndarray:
    """BooleanArray -> bool ndarray (null -> False)."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(bool)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _blank(arr: pa.Array) -> np.ndarray:
    """Strings that are empty after stripping whitespace (null -> False)."""
    return _mask(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0))


def _message_codes(prompts: pa.Array) -> np.ndarray:
    """Codes 4-8 of each row's first bad message (0 where every message is fine)."""
    n = len(prompts)
    elements = prompts.flatten()
    parents = pc.list_parent_indices(prompts).to_numpy()
    codes = np.zeros(len(elements), dtype=np.int64)
    if not pa.types.is_struct(elements.type):
        codes[:] = 4
    else:
        not_struct = ~_mask(pc.is_valid(elements))
        names = [elements.type.field(i).name for i in range(elements.type.num_fields)]
        role = elements.field("role") if "role" in names else pa.nulls(len(elements))
        content = elements.field("content") if "content" in names else pa.nulls(len(elements))
        role_bad = ~_mask(pc.is_valid(role))
        if _is_string(role.type):
            role_bad |= _blank(role)
        elif not pa.types.is_null(role.type):
            role_bad |= True
        content_missing = ~_mask(pc.is_valid(content))
        content_not_str = ~content_missing & (not _is_string(content.type))
        content_empty = _blank(content) if _is_string(content.type) else np.zeros(len(elements), dtype=bool)
        # the first failing check of each message, in row_problem's order
        for code, bad in reversed(
            [(4, not_struct), (5, role_bad), (6, content_missing), (7, content_not_str), (8, content_empty)]
        ):
            codes[bad] = code
    out = np.zeros(n, dtype=np.int64)
    bad = np.flatnonzero(codes)
    if len(bad):
        rows, first = np.unique(parents[bad], return_index=True)  # the first bad message of each row
        out[rows] = codes[bad[first]]
    return out


def _prompt_codes(prompts: pa.Array) -> np.ndarray:
    n = len(prompts)
    missing = ~_mask(pc.is_valid(prompts))
    t = prompts.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return np.where(missing, 1, 2).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    lengths = pc.fill_null(pc.list_value_length(prompts), 0).to_numpy(zero_copy_only=False)
    codes = _message_codes(prompts)
    codes[lengths == 0] = 3
    codes[missing] = 1
    return codes


def _truth_codes(truth: pa.Array, needs: DataNeeds) -> np.ndarray:
    n = len(truth)
    t = truth.type
    codes = np.zeros(n, dtype=np.int64)
    if pa.types.is_floating(t):
        finite = _mask(pc.is_finite(truth))
        valid = _mask(pc.is_valid(truth))
        if needs.scalar:
            integral = _mask(pc.equal(pc.floor(pc.if_else(pc.is_finite(truth), truth, 0.0)), truth))
            codes[valid & finite & ~integral] = 15
        codes[valid & ~finite] = 13
    elif _is_string(t):
        codes[_blank(truth)] = 12
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = pc.fill_null(pc.list_value_length(truth), 0).to_numpy(zero_copy_only=False)
        codes[lengths == 0] = 12
        if needs.scalar:
            codes[(lengths > 0)] = 14
    elif pa.types.is_struct(t) and t.num_fields == 0:
        codes[:] = 12
    elif needs.scalar and not pa.types.is_integer(t):  # bool, struct, binary, ...: not one answer
        codes[:] = 14
    codes[~_mask(pc.is_valid(truth))] = 11
    return codes


def _reward_codes(table: pa.Table, needs: DataNeeds) -> np.ndarray:
    n = table.num_rows
    if "reward_model" not in table.column_names:
        return np.full(n, 9, dtype=np.int64)
    models = _array(table.column("reward_model"))
    missing = ~_mask(pc.is_valid(models))
    if not pa.types.is_struct(models.type):
        return np.where(missing, 9, 10).astype(np.int64)
    names = [models.type.field(i).name for i in range(models.type.num_fields)]
    truth = models.field("ground_truth") if "ground_truth" in names else pa.nulls(n)
    codes = _truth_codes(truth, needs)
    codes[missing] = 9
    return codes


def problem_codes(table: pa.Table, needs: DataNeeds) -> np.ndarray:
    """IntArray[N]: the code (``PROBLEMS``) of each row's first problem, 0 where the row is fine.

    Column-wise: ``prompt`` is flattened to its messages once, each check is one pyarrow compute
    op over all messages, and a row takes the first failing check of its first bad message
    (``np.unique`` over the messages' row indices). The same codes as :func:`row_problem` row by row."""
    n = table.num_rows
    key = needs.prompt_key
    codes = _prompt_codes(_array(table.column(key))) if key in table.column_names else np.ones(n, dtype=np.int64)
    if needs.present:
        reward = _reward_codes(table, needs)
        codes = np.where(codes == 0, reward, codes)
    return codes


def _float_truths(table: pa.Table) -> int:
    if "reward_model" not in table.column_names:
        return 0
    models = _array(table.column("reward_model"))
    if not pa.types.is_struct(models.type) or models.type.get_field_index("ground_truth") < 0:
        return 0
    truth = models.field("ground_truth")
    return int(pc.sum(pc.is_valid(truth)).as_py() or 0) if pa.types.is_floating(truth.type) else 0


def check_file(path: str, needs: DataNeeds) -> FileReport:
    """Check every row of ``path``; ValueError ``<path> row <i>: <problem>; <fix> (and k more rows ...)``."""
    table, rows, fields = read_columns(path, needs)
    n = table.num_rows if table is not None else len(rows)
    if n == 0:
        raise ValueError(f"{path}: the file has no rows")
    key = needs.prompt_key
    listed = ", ".join(sorted(fields)) or "no fields"
    if key not in fields:
        raise ValueError(f"{path} row 0: no field {key!r} (data.prompt_key={key}); the file has: {listed}")
    has_rm = "reward_model" in fields
    if needs.present and not has_rm:
        raise ValueError(
            f"{path} row 0: no field 'reward_model' (the file has: {listed}); {needs.present}: " + REWARD_MODEL_FIX
        )
    if table is not None:
        codes = problem_codes(table, needs)
    else:
        codes = _loop_codes([r.get(key) for r in rows], [r.get("reward_model") for r in rows], needs, has_rm)
    bad = np.flatnonzero(codes)
    if len(bad):
        first = int(bad[0])
        if table is not None:
            prompt = table.column(key)[first].as_py()
            model = table.column("reward_model")[first].as_py() if has_rm else None
        else:
            prompt, model = rows[first].get(key), rows[first].get("reward_model")
        _, message = row_problem(prompt, model, needs, has_reward_model=has_rm)
        same = int((codes == codes[first]).sum()) - 1
        more = f" ({same} more rows of {n} have this problem)" if same else ""
        others = len(bad) - 1 - same
        more += f" ({others} more rows have other problems)" if others else ""
        raise ValueError(f"{path} row {first}: {message}{more}")
    if table is None:
        models = [r.get("reward_model") for r in rows]
        floats = sum(isinstance(m.get("ground_truth"), float) for m in models if isinstance(m, dict))
        # the checked messages' role and content (strings): one arrow type whatever else a message holds
        messages = [[{"role": m["role"], "content": m["content"]} for m in r[key]] for r in rows]
        table = pa.table({key: pa.array(messages)})
    else:
        floats = _float_truths(table)
    return FileReport(rows=n, float_truths=floats, table=table)


# ----------------------------------------------------------------------------- prompt lengths


def _messages(prompts: pa.Array, rows: np.ndarray) -> list[list[dict]]:
    taken = prompts.take(pa.array(rows, type=pa.int64())).to_pylist()
    return [[{k: v for k, v in m.items() if v is not None} for m in msgs] for msgs in taken]


def _render_lengths(tokenizer, conversations: list[list[dict]], kwargs: dict, chunk: int = 1024) -> list[int]:
    """Token counts of ``apply_chat_template(c, add_generation_prompt=True, tokenize=True)`` for each
    conversation: rendered as text, then tokenized in batches without special tokens (what
    ``tokenize=True`` does; the fast tokenizer encodes a batch in parallel)."""
    out = []
    for k in range(0, len(conversations), chunk):
        texts = tokenizer.apply_chat_template(
            conversations[k : k + chunk], add_generation_prompt=True, tokenize=False, **kwargs
        )
        out += [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return out


def prompt_lengths(
    table: pa.Table,
    prompt_key: str,
    tokenizer,
    limit: int,
    chat_kwargs: dict | None = None,
    check_sample: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """(lengths, tokenized): IntArray[N] of prompt token counts as verl renders a prompt
    (``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``), exact for
    every row that could exceed ``limit``, and the number of rows tokenized.

    A row is tokenized only when its upper bound can exceed ``limit``:
        bound_i = bytes_i + m_i * (o + 1)
    bytes_i: UTF-8 bytes of row i's message contents (a byte-level BPE token holds >= 1 byte; +1 per message
    for a SentencePiece prefix), m_i its message count, o the largest template overhead of one message
    (the template rendered around one empty message of each role in the file, generation prompt included).
    Rows under the bound keep the bound as their length (<= limit). ``check_sample`` rows under it are
    tokenized too; if one exceeds its bound (a template the bound does not hold for), every row is tokenized.
    """
    chat_kwargs = dict(chat_kwargs or {})
    prompts = _array(table.column(prompt_key))
    n = len(prompts)
    elements = prompts.flatten()
    parents = pc.list_parent_indices(prompts).to_numpy()
    content_bytes = pc.binary_length(pc.cast(elements.field("content"), pa.binary())).to_numpy(zero_copy_only=False)
    row_bytes = np.bincount(parents, weights=content_bytes, minlength=n).astype(np.int64)
    counts = pc.list_value_length(prompts).to_numpy(zero_copy_only=False).astype(np.int64)
    roles = [r for r in pc.unique(elements.field("role")).to_pylist() if r]
    overhead = max(_render_lengths(tokenizer, [[{"role": r, "content": ""}] for r in roles], chat_kwargs))
    bound = row_bytes + counts * (overhead + 1)
    lengths = bound.copy()
    candidates = np.flatnonzero(bound > limit)
    rng = np.random.default_rng(seed)
    below = np.flatnonzero(bound <= limit)
    sample = rng.choice(below, size=min(check_sample, len(below)), replace=False) if len(below) else below
    exact = np.array(_render_lengths(tokenizer, _messages(prompts, sample), chat_kwargs), dtype=np.int64)
    if np.any(exact > bound[sample]):
        candidates = np.arange(n)
    lengths[sample] = exact
    lengths[candidates] = _render_lengths(tokenizer, _messages(prompts, candidates), chat_kwargs)
    return lengths, len(candidates) + len(sample)
