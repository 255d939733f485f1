"""The gym's synthetic reasoning language: seeded multi-step arithmetic with labelled tokens.

Public API:
    TaskConfig                         -- operand ranges, steps, filler / side-step / error rates.
    Problem                            -- prompt text, operands, ops, the true answer.
    make_problems(n, seed, config)     -- n seeded problems.
    demonstration(problem, rng, config, perfect=False) -> list[Segment]  -- an (imperfect) solution.
    label_solution(text, problem)      -- character segments of any solution text (model samples too).
    token_labels(tokenizer, ids, problem) -> LongTensor[T]  -- one label per response token.
    grade(text, problem) -> float      -- 1.0 when the final ``#### n`` equals the answer, else 0.0.

The language. A prompt ``Q 7+3*2-4\\n`` applies the ops left to right (no precedence). A solution
writes one line per step, optional filler lines and optional side steps, then the answer::

    7+3=10            <- step: operands and result are CAUSAL (the answer depends on them)
    let me think about it   <- FILLER: changes nothing
    10*2=20
    note 4+5=9        <- side step: a computation the answer does not use (SIDE)
    20-4=16
    #### 16           <- ANSWER digits; ``####``, ops, ``=``, spaces and newlines are FORMAT

Which steps are causal is decided from the text, the same way for demonstrations and model
samples: starting from the last step whose result equals the final answer, walk back through the
latest earlier step whose result equals the current step's first operand. Step lines not on that
chain (and every ``note`` line) are SIDE. A response without ``####`` has no chain (no CAUSAL).
Labels: CAUSAL=0, FILLER=1, SIDE=2, FORMAT=3, ANSWER=4 (``LABELS`` maps names).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from verl_credit.spans import token_char_offsets

__all__ = [
    "CAUSAL",
    "FILLER",
    "SIDE",
    "FORMAT",
    "ANSWER",
    "LABELS",
    "FILLERS",
    "TaskConfig",
    "Problem",
    "Segment",
    "make_problems",
    "demonstration",
    "label_solution",
    "token_labels",
    "grade",
]

CAUSAL, FILLER, SIDE, FORMAT, ANSWER = 0, 1, 2, 3, 4
LABELS = {"causal": CAUSAL, "filler": FILLER, "side": SIDE, "format": FORMAT, "answer": ANSWER}
FILLERS = (
    "let me think about it",
    "ok so the next step is",
    "this is easy to do",
    "now we go on with it",
    "i will write it out",
)
_STEP = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")
_SIDE = re.compile(r"^note (\d+)([+\-*])(\d+)=(\d+)$")
_ANSWER = re.compile(r"^#### (-?\d+)$")


@dataclass(frozen=True)
class TaskConfig:
    """Options of the generator.

    Attributes:
        min_steps, max_steps: number of ops per problem (inclusive). Defaults 2, 4.
        max_operand: operands are drawn from [1, max_operand]; the start value from [2, max_operand].
        max_value: every intermediate result stays in [0, max_value] (ops that leave it are redrawn).
        filler_rate: chance of a filler line before each step and before the answer. Default 0.3.
        side_rate: chance of a side step (``note a+b=c``) before each step. Default 0.15.
        error_rate: chance that a demonstration writes a step's result off by 1-3 (later steps carry
            the error, so the demonstration usually ends wrong; values may then leave [0, max_value], even
            go negative). Default 0.3: the setting with the most measured headroom of the ground-truth
            oracle over GRPO (docs/gym.md; it was 0.12 before issue 20).
    """

    min_steps: int = 2
    max_steps: int = 4
    max_operand: int = 9
    max_value: int = 60
    filler_rate: float = 0.3
    side_rate: float = 0.15
    error_rate: float = 0.3

    def __post_init__(self):
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"gym task: need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if self.max_operand < 2 or self.max_value < self.max_operand:
            raise ValueError("gym task: need max_operand >= 2 and max_value >= max_operand")
        for name in ("filler_rate", "side_rate", "error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"gym task: {name} must lie in [0, 1], got {value!r}")


@dataclass(frozen=True)
class Problem:
    """start, ops (each "+", "-" or "*"), operands; ``prompt`` and ``answer`` derived."""

    start: int
    ops: tuple[str, ...]
    operands: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return (
            "Q " + str(self.start) + "".join(f"{op}{x}" for op, x in zip(self.ops, self.operands, strict=True)) + "\n"
        )

    @property
    def values(self) -> list[int]:
        """Intermediate results v_1..v_n (v_n is the answer)."""
        out, v = [], self.start
        for op, x in zip(self.ops, self.operands, strict=True):
            v = _apply(v, op, x)
            out.append(v)
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]


@dataclass(frozen=True)
class Segment:
    """A piece of solution text and its label (one of ``LABELS``' values)."""

    text: str
    label: int


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def make_problems(n: int, seed: int, config: TaskConfig | None = None) -> list[Problem]:
    """n problems from ``random.Random(seed)``; every intermediate value in [0, max_value]."""
    cfg = config or TaskConfig()
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        steps = rng.randint(cfg.min_steps, cfg.max_steps)
        v = rng.randint(2, cfg.max_operand)
        start, ops, xs = v, [], []
        for _ in range(steps):
            while True:
                op, x = rng.choice("+-*"), rng.randint(1, cfg.max_operand)
                if op == "*":
                    x = rng.randint(2, 3)
                nv = _apply(v, op, x)
                if 0 <= nv <= cfg.max_value:
                    break
            ops.append(op)
            xs.append(x)
            v = nv
        problems.append(Problem(start=start, ops=tuple(ops), operands=tuple(xs)))
    return problems


def _step_segments(a: int, op: str, b: int, c: int, label: int, prefix: str = "") -> list[Segment]:
    out = [Segment(prefix, FORMAT)] if prefix else []
    return [*out, Segment(str(a), label), Segment(op, FORMAT), Segment(str(b), label), Segment("=", FORMAT)] + [
        Segment(str(c), label),
        Segment("\n", FORMAT),
    ]


def demonstration(problem: Problem, rng: random.Random, config: TaskConfig | None = None, perfect: bool = False):
    """A labelled solution: list[Segment]. Imperfect unless ``perfect``: random fillers and side
    steps, and each step's result is wrong with probability ``error_rate`` (the error propagates,
    the written chain stays consistent, so the final answer is then wrong, unless two errors cancel)."""
    cfg = config or TaskConfig()
    segs: list[Segment] = []
    v = problem.start
    for op, x in zip(problem.ops, problem.operands, strict=True):
        if not perfect and rng.random() < cfg.filler_rate:
            segs += [Segment(rng.choice(FILLERS), FILLER), Segment("\n", FORMAT)]
        if not perfect and rng.random() < cfg.side_rate:
            a, b = rng.randint(1, cfg.max_operand), rng.randint(1, cfg.max_operand)
            segs += _step_segments(a, "+", b, a + b, SIDE, prefix="note ")
        result = _apply(v, op, x)
        if not perfect and rng.random() < cfg.error_rate:
            result = max(0, result + rng.choice((-3, -2, -1, 1, 2, 3)))
        segs += _step_segments(v, op, x, result, CAUSAL)
        v = result
    if not perfect and rng.random() < cfg.filler_rate:
        segs += [Segment(rng.choice(FILLERS), FILLER), Segment("\n", FORMAT)]
    return [*segs, Segment("#### ", FORMAT), Segment(str(v), ANSWER)]


def label_solution(text: str, problem: Problem | None = None) -> list[Segment]:
    """Segments (covering ``text`` exactly) of any solution text, causal chain found from the text.

    ``problem`` is accepted for symmetry and not needed: the chain is read off the solution itself.
    """
    lines = text.split("\n")
    parsed = []  # (kind, match) per line
    for line in lines:
        for kind, pattern in (("step", _STEP), ("side", _SIDE), ("answer", _ANSWER)):
            m = pattern.match(line)
            if m:
                parsed.append((kind, m))
                break
        else:
            parsed.append(("filler", None))
    causal: set[int] = set()
    answer_line = next((k for k, (kind, _) in enumerate(parsed) if kind == "answer"), None)
    if answer_line is not None:
        want, k = parsed[answer_line][1].group(1), answer_line - 1
        while k >= 0:
            kind, m = parsed[k]
            if kind == "step" and m.group(4) == want:
                causal.add(k)
                want = m.group(1)
            k -= 1
    segs: list[Segment] = []
    for k, ((kind, m), line) in enumerate(zip(parsed, lines, strict=True)):
        if kind in ("step", "side"):
            label = CAUSAL if k in causal else SIDE
            prefix = "note " if kind == "side" else ""
            segs += _step_segments(*(m.group(i) for i in range(1, 5)), label=label, prefix=prefix)[:-1]
        elif kind == "answer":
            segs += [Segment("#### ", FORMAT), Segment(m.group(1), ANSWER if k == answer_line else SIDE)]
        elif line:
            segs.append(Segment(line, FILLER))
        if k < len(lines) - 1:
            segs.append(Segment("\n", FORMAT))
    return segs


def token_labels(tokenizer, ids, problem: Problem | None = None, segments: list[Segment] | None = None):
    """One label per token of ``ids`` (a response, special tokens allowed at the end).

    Each character gets its segment's label; a token takes the label of its characters with the
    priority CAUSAL < ANSWER < SIDE < FILLER < FORMAT (a token touching a causal digit is causal).
    Special tokens and tokens with no characters are FORMAT; the text from the first special token
    on is not parsed (a sampled response ends with eos).
    Shapes: ids (T,) -> LongTensor[T].
    """
    text, starts, ends = token_char_offsets(tokenizer, ids)
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    first_special = next((t for t, i in enumerate(ids) if int(i) in special), None)
    body = text if first_special is None else text[: int(starts[first_special])]
    segs = segments if segments is not None else label_solution(body, problem)
    char_label = torch.full((len(text) + 1,), FORMAT, dtype=torch.long)
    pos = 0
    for seg in segs:
        if text[pos : pos + len(seg.text)] != seg.text:
            raise ValueError(f"gym task: segment {seg.text!r} does not match the text at character {pos}")
        char_label[pos : pos + len(seg.text)] = seg.label
        pos += len(seg.text)
    priority = torch.tensor([0, 3, 2, 4, 1])  # rank of CAUSAL, FILLER, SIDE, FORMAT, ANSWER
    order = torch.tensor([CAUSAL, ANSWER, SIDE, FILLER, FORMAT])
    out = torch.full((len(ids),), FORMAT, dtype=torch.long)
    for t, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        if e > s and int(ids[t]) not in special:
            out[t] = order[priority[char_label[s:e]].min()]
    return out


def grade(text: str, problem: Problem) -> float:
    """1.0 when the first ``#### n`` line's n equals the problem's answer, else 0.0."""
    m = re.search(r"^#### (-?\d+)$", text, flags=re.MULTILINE)
    return 1.0 if m is not None and int(m.group(1)) == problem.answer else 0.0
