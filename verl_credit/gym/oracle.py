"""Ground-truth credit bounds for the gym: ``oracle`` and ``anti_oracle`` (they read the task's labels).

Public API:
    OracleSpec                      -- how the target mask becomes weights (scale, floors, clip, norm).
    DEFAULT_VARIANT                 -- the variant plain ``oracle`` / ``anti_oracle`` use (one place).
    parse_variant(text) -> OracleSpec   -- ``"floor0.2:clip3"`` (items after ``oracle:``).
    first_wrong_step(text, problem) -> int | None   -- character offset of the first wrong step line.
    blame_onset(text, problem) -> int               -- where a wrong rollout's blame starts (characters).
    oracle_targets(tokenizer, ids, problem, correct) -> (target, fmt)   -- BoolTensor[T] each.
    oracle_weights(target, fmt, mask, z, spec) -> FloatTensor[B, T]     -- vectorised.
    oracle_weights_reference(...)                                       -- the same with Python loops.
    shuffle_weights(w, mask, generator) -> FloatTensor[B, T]            -- the ``shuffle`` control.
    oracle_advantages(spec, anti, rollouts, tokenizer, z_adv, threshold) -> FloatTensor[B, T]

Definition. A = z_i * w_it with z_i GRPO's group-normalised outcome advantage (verl's numbers).
Targets (the tokens the outcome is due to, from the task's own labels):
  - a correct rollout: its CAUSAL and ANSWER tokens (``task.token_labels``); with ``lines``, every
    token of the lines that hold them (the causal step lines and the answer line with their ``=``, ops,
    newlines and ``#### ``) and the eos, so that the format shared by right and wrong rollouts is pushed
    up in right ones as it is pushed down in wrong ones (cancellation kept);
  - a wrong rollout: every token from the start of its first wrong step line to the end (later
    steps, the answer line, eos). A step line ``a op b = c`` (``note`` side lines are not steps) is
    right when it is exactly the next step of the problem: a = the previous right step's result (the
    problem's start value for the first), op and b = the problem's next op and operand, c = a op b.
    The first step line that is not is the first wrong step: a wrong result, a wrong carried operand,
    a wrong op or operand, or a step beyond the problem's last. (Before it every step is right, so
    "the previous step's written result" and the true value coincide.)
  - a wrong rollout with no wrong step line (all steps right, then a wrong or missing ``#### n``,
    or the response was cut): the tail after its last right step line (fillers, side lines, the
    answer line, eos; only the eos when it ended right after a step); when that tail is empty
    (cut at the length limit right after a right step, no eos), the whole response.
``anti_oracle`` targets the complement within each rollout (valid tokens that are not targets).
Weights: raw r_it = 1 on targets; on the other valid tokens ``floor`` (content tokens) and
max(floor, fmt) on FORMAT tokens (``=``, ops, newlines, ``#### ``, eos). The format floor exists
because zero weight on format and eos tokens made the oracle collapse at lr 3e-4 (nothing
reinforced finishing). Then ``scale``:
  - ``mean1``: w = r * n / sum(r) over the normalisation unit (mean 1 over its valid tokens);
  - ``mask``: w = r (no rescale).
``clipC`` (mean1 only): w = min(w, C), then rescaled to mean 1 once more (it can exceed C again
slightly; one pass, documented). Normalisation unit (``norm``): ``rollout`` (each rollout's valid
tokens) or ``persign`` (all valid tokens of the batch's rollouts with z > 0, and those with z < 0,
each a unit). A unit whose raw weights are all 0 gets weight 0 (e.g. anti_oracle on a wrong rollout
that is wrong from its first step line). Rows with z = 0 (uniform groups) get no gradient anyway.

``shuffle`` (a control, not a bound): each rollout's final weights are permuted at random over its valid
tokens. Every rollout keeps its multiset of weights (so its share of kept tokens, its mean weight and the
size of its update), but the weights no longer sit on the tokens the labels point at. An oracle gain that
survives the shuffle comes from the step size (e.g. a 0/1 mask shrinking the update), not from credit.
The permutation is drawn from a generator seeded by the batch's token ids (the same batch, the same draw).

Variant grammar (items after the method name, ``:``-separated, each at most once, applied to the
base mean1, floor 0, fmt 0.2, no clip, per rollout, token targets): ``mean1`` | ``mask`` | ``lines`` |
``floorF`` | ``fmtF`` | ``clipC`` | ``persign`` | ``shuffle``; F in [0, 1], C > 1. Plain ``oracle`` = base +
``DEFAULT_VARIANT``; items given replace it (``oracle:lines:mask:fmt0:shuffle`` is the default's control).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from verl_credit.gym.defaults import DEFAULT_VARIANT
from verl_credit.gym.task import _SIDE, _STEP, ANSWER, CAUSAL, FORMAT, Problem, _apply, token_labels
from verl_credit.spans import token_char_offsets

__all__ = [
    "ORACLES",
    "DEFAULT_VARIANT",
    "OracleSpec",
    "parse_variant",
    "first_wrong_step",
    "blame_onset",
    "oracle_targets",
    "oracle_weights",
    "oracle_weights_reference",
    "shuffle_weights",
    "oracle_advantages",
]

ORACLES = ("oracle", "anti_oracle")


@dataclass(frozen=True)
class OracleSpec:
    """scale: "mean1" | "mask"; floor: weight of non-target content tokens; fmt: floor of non-target
    FORMAT tokens (eos included); clip: None or C > 1 (mean1 only); norm: "rollout" | "persign";
    target: "tokens" | "lines"; shuffle: permute each rollout's weights over its valid tokens (control)."""

    scale: str = "mean1"
    floor: float = 0.0
    fmt: float = 0.2
    clip: float | None = None
    norm: str = "rollout"
    target: str = "tokens"
    shuffle: bool = False

    def describe(self) -> str:
        parts = [self.scale, f"floor{self.floor:g}", f"fmt{self.fmt:g}"]
        parts += ["lines"] if self.target == "lines" else []
        parts += [f"clip{self.clip:g}"] if self.clip is not None else []
        parts += ["persign"] if self.norm == "persign" else []
        parts += ["shuffle"] if self.shuffle else []
        return ":".join(parts)


_ITEM = re.compile(r"^(mean1|mask|persign|lines|shuffle|floor|fmt|clip)(.*)$")
_FLAGS = {"mean1": ("scale", "mean1"), "mask": ("scale", "mask"), "persign": ("norm", "persign")}
_FLAGS |= {"lines": ("target", "lines"), "shuffle": ("shuffle", True)}


def parse_variant(text: str | None) -> OracleSpec:
    """Items ``a:b:c`` (see the module docstring) -> OracleSpec; "" or None -> the default variant.
    ValueError naming the item otherwise."""
    if not text:
        text = DEFAULT_VARIANT
    values: dict = {}
    for item in text.split(":"):
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(
                f"unknown oracle variant item {item!r}; known: mean1, mask, lines, floorF, fmtF, clipC, persign, "
                "shuffle"
            )
        key, arg = m.groups()
        field = _FLAGS[key][0] if key in _FLAGS else key
        if field in values:
            raise ValueError(f"oracle variant item {item!r}: {field} given twice")
        if key in _FLAGS:
            if arg:
                raise ValueError(f"oracle variant item {item!r}: {key} takes no number")
            values[field] = _FLAGS[key][1]
            continue
        try:
            number = float(arg)
        except ValueError:
            raise ValueError(f"oracle variant item {item!r}: expected a number after {key!r}") from None
        if key in ("floor", "fmt") and not 0.0 <= number <= 1.0:
            raise ValueError(f"oracle variant item {item!r}: {key} must lie in [0, 1]")
        if key == "clip" and not number > 1.0:
            raise ValueError(f"oracle variant item {item!r}: clip must be > 1 (weights have mean 1)")
        values[field] = number
    spec = OracleSpec(**values)
    if spec.clip is not None and spec.scale != "mean1":
        raise ValueError("oracle variant: clipC needs mean1 weights (not mask)")
    return spec


def _lines(text: str) -> list[tuple[int, str]]:
    """(start character, line) of every line of ``text``."""
    out, pos = [], 0
    for line in text.split("\n"):
        out.append((pos, line))
        pos += len(line) + 1
    return out


def first_wrong_step(text: str, problem: Problem) -> int | None:
    """Character offset of the first step line that is not exactly the next right step (module
    docstring), or None when every step line is right."""
    v, k = problem.start, 0
    for start, line in _lines(text):
        if _SIDE.match(line):
            continue
        m = _STEP.match(line)
        if m is None:
            continue
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        right = (
            k < len(problem.ops)
            and a == v
            and op == problem.ops[k]
            and b == problem.operands[k]
            and c == _apply(a, op, b)
        )
        if not right:
            return start
        v, k = c, k + 1
    return None


def blame_onset(text: str, problem: Problem) -> int:
    """Where a wrong rollout's targets start: the first wrong step line, else the line after the last
    right step line (0 without step lines); len(text) when that tail is empty (the caller then
    targets the whole response)."""
    wrong = first_wrong_step(text, problem)
    if wrong is not None:
        return wrong
    last_end = 0
    for start, line in _lines(text):
        if _STEP.match(line) and not _SIDE.match(line):
            last_end = start + len(line) + 1
    return min(last_end, len(text))


def _line_targets(text: str, starts, ends, target: torch.Tensor, first_special: int | None) -> torch.Tensor:
    """Every token of a line that holds a target token, and the special tokens from ``first_special`` on.

    A token belongs to the line of its first character; a newline token to the line it ends.
    Shapes: starts, ends (T,), target BoolTensor[T] -> BoolTensor[T].
    """
    line_of_char = [0] * (len(text) + 1)
    line = 0
    for c, ch in enumerate(text):
        line_of_char[c] = line
        line += ch == "\n"
    line_of_char[len(text)] = line
    lines = torch.tensor([line_of_char[min(int(s), len(text))] for s in starts], dtype=torch.long)
    out = torch.isin(lines, lines[target]) if bool(target.any()) else torch.zeros_like(target)
    if first_special is not None:
        out[first_special:] = True
    return out


def oracle_targets(
    tokenizer, ids, problem: Problem, correct: bool, target_unit: str = "tokens"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, fmt) of one response: BoolTensor[T] each; ids (T,) the valid response ids (eos included).

    target: CAUSAL/ANSWER tokens of a correct response (``target_unit="lines"``: every token of the lines
    that hold them, i.e. the causal step lines and the answer line with their ``=``, ops, newlines and
    ``#### ``, and the eos); the tokens ending after the blame onset of a wrong one (a token straddling
    the onset counts) and its eos, every token when that leaves none.
    fmt: tokens labelled FORMAT (special tokens included).
    """
    ids = [int(i) for i in ids]
    labels = token_labels(tokenizer, ids, problem)
    fmt = labels == FORMAT
    text, starts, ends = token_char_offsets(tokenizer, ids)
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    first_special = next((t for t, i in enumerate(ids) if i in special), None)
    if correct:
        target = (labels == CAUSAL) | (labels == ANSWER)
        if target_unit == "lines":
            target = _line_targets(text, starts, ends, target, first_special)
        return target, fmt
    body = text if first_special is None else text[: int(starts[first_special])]
    onset = blame_onset(body, problem)
    target = torch.as_tensor(ends > onset)
    if first_special is not None:
        target[first_special:] = True  # eos belongs to the tail
    if not bool(target.any()):  # cut right after a right step, no eos: nothing to localise
        target[:] = True
    return target, fmt


def _units(z: torch.Tensor, norm: str) -> torch.Tensor:
    """LongTensor[B]: the normalisation unit of each row (its index, or 0/1/2 for z <0/=0/>0)."""
    if norm == "rollout":
        return torch.arange(z.shape[0])
    return (torch.sign(z) + 1).long()


def _mean1(w: torch.Tensor, mask: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """w * n_u / sum_u(w) per unit u (valid tokens only); 0 in a unit whose weights sum to 0."""
    U = int(unit.max()) + 1 if unit.numel() else 0
    total = torch.zeros(U, dtype=w.dtype).index_add_(0, unit, (w * mask).sum(1))
    count = torch.zeros(U, dtype=w.dtype).index_add_(0, unit, mask.sum(1))
    factor = torch.where(total > 0, count / total.clamp_min(1e-12), torch.zeros_like(total))
    return w * factor[unit].unsqueeze(1) * mask


def oracle_weights(
    target: torch.Tensor, fmt: torch.Tensor, mask: torch.Tensor, z: torch.Tensor, spec: OracleSpec
) -> torch.Tensor:
    """Weights w (module docstring). Shapes: target, fmt, mask (B, T) bool/0-1; z (B,) -> (B, T) float64,
    0 at padding."""
    m = mask.double()
    t = target.bool() & mask.bool()
    floor_fmt = max(spec.floor, spec.fmt)
    raw = torch.where(t, 1.0, torch.where(fmt.bool(), floor_fmt, spec.floor)).double() * m
    if spec.scale == "mask":
        return raw
    unit = _units(z, spec.norm)
    w = _mean1(raw, m, unit)
    if spec.clip is not None:
        w = _mean1(w.clamp_max(spec.clip), m, unit)
    return w


def oracle_weights_reference(target, fmt, mask, z, spec: OracleSpec) -> torch.Tensor:
    """:func:`oracle_weights` with Python loops over rows and tokens (the test reference)."""
    B, T = mask.shape
    raw = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        for t in range(T):
            if mask[i, t]:
                if target[i, t]:
                    raw[i, t] = 1.0
                elif fmt[i, t]:
                    raw[i, t] = max(spec.floor, spec.fmt)
                else:
                    raw[i, t] = spec.floor
    if spec.scale == "mask":
        return raw
    units = (
        [[i] for i in range(B)]
        if spec.norm == "rollout"
        else [[i for i in range(B) if (z[i] > 0) == s and z[i] != 0] for s in (True, False)]
        + [[i for i in range(B) if z[i] == 0]]
    )

    def rescale(w):
        out = torch.zeros_like(w)
        for rows in units:
            total = sum(float(w[i, t]) for i in rows for t in range(T) if mask[i, t])
            count = sum(1 for i in rows for t in range(T) if mask[i, t])
            for i in rows:
                for t in range(T):
                    if mask[i, t] and total > 0:
                        out[i, t] = w[i, t] * count / total
        return out

    w = rescale(raw)
    if spec.clip is not None:
        w = rescale(torch.minimum(w, torch.full_like(w, spec.clip)))
    return w


def shuffle_weights(w: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The ``shuffle`` control: each row's weights on its valid tokens, permuted uniformly at random.

    w: FloatTensor[B, T]; mask: [B, T] 0/1 (any valid positions, not only a prefix). Returns [B, T]:
    out[b, dst_k] = w[b, src_k], dst = the row's valid positions in order, src = the same positions in
    a random order; 0 at padding. Each row keeps its multiset of valid weights.
    """
    valid = mask.bool()
    B, T = valid.shape
    position = torch.arange(T).expand(B, T)
    dst = torch.where(valid, position, position + T).argsort(1)  # valid positions first, in order
    keys = torch.rand(B, T, generator=generator, dtype=torch.float64)
    src = torch.where(valid, keys, keys + 2.0).argsort(1)  # valid positions first, shuffled
    # beyond a row's valid count both index padding, where w * mask is 0
    return torch.zeros_like(w).scatter_(1, dst, (w * valid).gather(1, src))


def oracle_advantages(
    spec: OracleSpec, anti: bool, r, tokenizer, z_adv: torch.Tensor, correct_threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, weights), both FloatTensor[B, T]: A = z_i * w_it on the gym ``Rollouts`` ``r``.

    z_adv: GRPO's advantages (B, T) (z_i broadcast over valid tokens); correct = reward > threshold.
    """
    B, T = r.responses.shape
    mask = r.response_mask.bool()
    target = torch.zeros(B, T, dtype=torch.bool)
    fmt = torch.zeros(B, T, dtype=torch.bool)
    for i in range(B):  # text parsing: one row at a time (the weights below are vectorised)
        n = int(mask[i].sum())
        target[i, :n], fmt[i, :n] = oracle_targets(
            tokenizer, r.responses[i, :n], r.problems[i], bool(r.rewards[i] > correct_threshold), spec.target
        )
    if anti:
        target = mask & ~target
    m = mask.double()
    z = (z_adv.double() * m).sum(1) / m.sum(1).clamp_min(1)
    w = oracle_weights(target, fmt, mask, z, spec)
    if spec.shuffle:
        generator = torch.Generator().manual_seed(int(r.responses.sum()) % (2**63 - 1))
        w = shuffle_weights(w, mask, generator)
    return (z.unsqueeze(1) * w).to(z_adv.dtype), w.float()
