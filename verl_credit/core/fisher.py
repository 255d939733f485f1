"""Two-sided Fisher exact test on a batch of 2x2 tables.

Public API:
    fisher_exact_two_sided(a, b, c, d) -> p   -- any shape (...,) int tensors -> (...,) float64.
    fisher_exact_two_sided_loop(a, b, c, d)   -- one table, plain Python (reference for tests).
    fisher_authors(a, b, c, d, width) -> p    -- KTAE authors' float32 arithmetic, (...,) -> (...,) float32.
    fisher_authors_loop(a, b, c, d, width)    -- one table, a loop over x (reference for tests).

For the table [[a, b], [c, d]] with N = a+b+c+d, row sum k = a+b and column sum m = a+c, the
count in the top-left cell is hypergeometric under independence:

    P(x) = C(k, x) C(N-k, m-x) / C(N, m),    max(0, m+k-N) <= x <= min(k, m)

    p = sum_x P(x) [P(x) <= P(a)]            (the "probabilities as extreme" definition)

This is the definition ``scipy.stats.fisher_exact(alternative="two-sided")`` uses, and it is 1.0
exactly when a row or column is empty or when a is a mode.

Exactness: every numerator C(k, x) C(N-k, m-x) is at most C(N, m) (Vandermonde), and
C(66, 33) < 2**63, so for N <= 66 the numerators are exact int64 and ties are compared exactly.
For N > 66 the log-probabilities are compared with a relative tolerance of 1e-7 (the tolerance R's
``fisher.test`` uses). Distinct tables are computed once: the work is O(U * (N+1)) for U distinct
(N, k, m, a) tuples, which is tiny for RL group sizes.

The KTAE authors' arithmetic (``fisher_authors``; KTAE's default ``credit.ktae.fisher: authors``).
Their code (github xiaolizh1/KTAE, ``fisher_exact_test`` in ``compute_key_tokens.py``) evaluates the
same sum in float32: with k = a+b and m = a+c,

    log P(x) = logC(m, x) + logC(N-m, k-x) - logC(N, k),   logC(n, j) = lgamma(n+1) - lgamma(j+1) - lgamma(n-j+1)
    p = sum over x in [0, width) of exp(log P(x)) [lo <= x <= hi and exp(log P(x)) <= exp(log P(a))]

with no tie tolerance, the sum taken by ``torch.sum`` over a row of ``width`` terms. ``width`` is the
length of their x grid: one grid for all the tables of a KTAE group, as long as the largest
min(k, m) + 1 among them. The rounding (hence the value) depends on it, because float32 addition is
not associative. Consequences: a table whose exact p is 1 usually gets p = 1 +- a few ulp, so KTAE's
F = exp(-2p) is ~0.135 instead of the p == 1 -> 0 branch, and probabilities that tie exactly may
round apart (one counted, the other not, moving p by up to 0.5). ``fisher_authors`` reproduces
their values bit for bit on our test machine (x86-64, torch 2.13: every table with N <= 24 at several
widths): the same torch operations on rows of the same width, each distinct (table, width) once.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "EXACT_MAX_N",
    "fisher_authors",
    "fisher_authors_loop",
    "fisher_exact_two_sided",
    "fisher_exact_two_sided_loop",
]

EXACT_MAX_N = 66  # largest N whose hypergeometric numerators all fit in int64
_LOG_TIE_RTOL = math.log1p(1e-7)


def _binomials(n_max: int) -> torch.Tensor:
    """Exact Pascal triangle C[n, j] (int64), shape (n_max+1, n_max+1), zero where j > n."""
    table = torch.zeros(n_max + 1, n_max + 1, dtype=torch.int64)
    table[:, 0] = 1
    for n in range(1, n_max + 1):
        table[n, 1 : n + 1] = table[n - 1, 1 : n + 1] + table[n - 1, 0:n]
    return table


def _exact_pvalues(N, k, m, a, x):
    """p for U unique tables, exact integers. N, k, m, a: (U,) int64; x: (S,) int64 -> (U,) f64."""
    C = _binomials(int(N.max()))
    S = x.numel()
    lo = (m + k - N).clamp_min(0)
    hi = torch.minimum(k, m)
    xs = x.unsqueeze(0).expand(N.numel(), S)
    valid = (xs >= lo.unsqueeze(1)) & (xs <= hi.unsqueeze(1))
    r = (N - k).unsqueeze(1)
    left = C[k.unsqueeze(1).expand_as(xs), xs.clamp(max=C.shape[1] - 1)]
    right_col = (m.unsqueeze(1) - xs).clamp(0, C.shape[1] - 1)
    right = C[r.expand_as(xs), right_col]
    num = torch.where(valid, left * right, torch.zeros_like(left))
    obs = num.gather(1, a.unsqueeze(1))
    included = torch.where(valid & (num <= obs), num, torch.zeros_like(num)).sum(dim=1)
    denom = C[N, m]
    p = included.double() / denom.double()
    return torch.where(included == denom, torch.ones_like(p), p)


def _log_pvalues(N, k, m, a, x):
    """p for U unique tables in log space (any N). Same shapes as :func:`_exact_pvalues`."""
    Nf, kf, mf = N.double(), k.double(), m.double()

    def log_comb(n, j):
        return torch.lgamma(n + 1) - torch.lgamma(j + 1) - torch.lgamma(n - j + 1)

    xs = x.double().unsqueeze(0)
    lo = (m + k - N).clamp_min(0).unsqueeze(1)
    hi = torch.minimum(k, m).unsqueeze(1)
    valid = (x.unsqueeze(0) >= lo) & (x.unsqueeze(0) <= hi)
    xs_safe = torch.where(valid, xs, lo.double())
    log_num = log_comb(kf.unsqueeze(1), xs_safe) + log_comb((Nf - kf).unsqueeze(1), mf.unsqueeze(1) - xs_safe)
    log_num = torch.where(valid, log_num, torch.full_like(log_num, -math.inf))
    log_obs = log_num.gather(1, a.unsqueeze(1))
    included = valid & (log_num <= log_obs + _LOG_TIE_RTOL)
    log_p = torch.logsumexp(torch.where(included, log_num, torch.full_like(log_num, -math.inf)), dim=1)
    p = (log_p - log_comb(Nf, mf)).exp().clamp(max=1.0)
    all_in = (included == valid).all(dim=1)
    return torch.where(all_in, torch.ones_like(p), p)


def fisher_exact_two_sided(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Two-sided Fisher exact p-value of [[a, b], [c, d]], elementwise over any shape.

    Shapes: a, b, c, d (...,) non-negative integers -> p (...,) float64 in (0, 1].
    """
    a, b, c, d = (torch.as_tensor(t).long() for t in (a, b, c, d))
    a, b, c, d = torch.broadcast_tensors(a, b, c, d)
    shape = a.shape
    if a.numel() == 0:
        return torch.zeros(shape, dtype=torch.float64)
    if bool(((a < 0) | (b < 0) | (c < 0) | (d < 0)).any()):
        raise ValueError("fisher_exact_two_sided: table cells must be non-negative counts")
    a, b, c, d = a.reshape(-1), b.reshape(-1), c.reshape(-1), d.reshape(-1)
    N, k, m = a + b + c + d, a + b, a + c
    S = int(N.max()) + 1
    code = ((N * S + k) * S + m) * S + a
    uniq, inverse = torch.unique(code, return_inverse=True)
    ua = uniq % S
    um = (uniq // S) % S
    uk = (uniq // (S * S)) % S
    uN = uniq // (S * S * S)
    x = torch.arange(S, dtype=torch.int64)
    if S - 1 <= EXACT_MAX_N:
        p = _exact_pvalues(uN, uk, um, ua, x)
    else:
        p = _log_pvalues(uN, uk, um, ua, x)
    return p[inverse].reshape(shape)


def fisher_exact_two_sided_loop(a: int, b: int, c: int, d: int) -> float:
    """Reference: the same p-value for one table, with Python's exact integers."""
    N, k, m = a + b + c + d, a + b, a + c
    lo, hi = max(0, m + k - N), min(k, m)
    nums = {x: math.comb(k, x) * math.comb(N - k, m - x) for x in range(lo, hi + 1)}
    obs = nums[a]
    included = sum(v for v in nums.values() if v <= obs)
    return included / math.comb(N, m)


# ------------------------------------------------------------------ the KTAE authors' float32 arithmetic


def _log_comb32(n: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """log C(n, j) in float32 through lgamma, evaluated as the authors do (same operation order)."""
    return torch.lgamma(n + 1) - torch.lgamma(j + 1) - torch.lgamma(n - j + 1)


def _authors_rows(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, width: int) -> torch.Tensor:
    """p for U tables sharing one grid width. a, b, c, d: (U,) float32 -> (U,) float32.

    The grid is materialised as (U, width) tensors, broadcast inputs expanded, as theirs are: torch
    may round an element differently on its vectorised and scalar paths, and the layout picks the path.
    """
    k, m = a + b, a + c
    n = k + (c + d)
    lo = torch.clamp(k + m - n, min=0.0)
    hi = torch.minimum(k, m)
    x = torch.arange(width, dtype=torch.float32).repeat(a.numel(), 1)
    in_range = (x >= lo.unsqueeze(1)) & (x <= hi.unsqueeze(1))
    m_g, k_g, n_g = (t.unsqueeze(1).expand_as(x) for t in (m, k, n))
    p_x = torch.exp(_log_comb32(m_g, x) + _log_comb32(n_g - m_g, k_g - x) - _log_comb32(n_g, k_g)) * in_range.float()
    p_obs = torch.exp(_log_comb32(m, a) + _log_comb32(n - m, k - a) - _log_comb32(n, k))
    return torch.sum(torch.where((p_x <= p_obs.unsqueeze(1)) & in_range, p_x, 0.0), dim=1)


def fisher_authors(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, width: torch.Tensor | int
) -> torch.Tensor:
    """Two-sided Fisher p of [[a, b], [c, d]] as the KTAE authors' code computes it (float32).

    width: length of the x grid, >= min(a+b, a+c) + 1 for each table; in KTAE one value per group
    (its tables' largest min(a+b, a+c) + 1). Shapes: a, b, c, d, width (...,) non-negative integers
    (broadcast) -> p (...,) float32. Each distinct (table, width) is computed once.
    """
    a, b, c, d, width = (torch.as_tensor(t).long() for t in (a, b, c, d, width))
    a, b, c, d, width = torch.broadcast_tensors(a, b, c, d, width)
    shape = a.shape
    if a.numel() == 0:
        return torch.zeros(shape, dtype=torch.float32)
    if bool(((a < 0) | (b < 0) | (c < 0) | (d < 0)).any()):
        raise ValueError("fisher_authors: table cells must be non-negative counts")
    a, b, c, d, width = (t.reshape(-1) for t in (a, b, c, d, width))
    if bool((width < torch.minimum(a + b, a + c) + 1).any()):
        raise ValueError("fisher_authors: width must be >= min(a+b, a+c) + 1 for every table")
    S = int(torch.stack([a, b, c, d, width]).max()) + 1
    if S**5 < 2**63:  # one int64 key per (table, width): a 1-D unique, much faster than unique(dim=0)
        code = (((a * S + b) * S + c) * S + d) * S + width
        uniq, inverse = torch.unique(code, return_inverse=True)
        cells = torch.stack([(uniq // S**j) % S for j in (4, 3, 2, 1, 0)], dim=1)  # (U, 5): a, b, c, d, width
    else:
        cells, inverse = torch.unique(torch.stack([a, b, c, d, width], dim=1), dim=0, return_inverse=True)
    p = torch.empty(cells.shape[0], dtype=torch.float32)
    for w in torch.unique(cells[:, 4]).tolist():
        sel = (cells[:, 4] == w).nonzero(as_tuple=True)[0]
        a32, b32, c32, d32 = cells[sel, :4].float().unbind(1)
        p[sel] = _authors_rows(a32, b32, c32, d32, int(w))
    return p[inverse].reshape(shape)


def fisher_authors_loop(a: int, b: int, c: int, d: int, width: int) -> float:
    """Reference for :func:`fisher_authors`: one table, one float32 scalar per grid point x.

    The terms are added by ``torch.sum`` over the row of ``width`` terms, as theirs are (a Python
    running sum rounds differently, which moves p off or onto exactly 1).
    """

    def f32(v) -> torch.Tensor:
        return torch.tensor(float(v), dtype=torch.float32)

    k, m, n = a + b, a + c, a + b + c + d

    def prob(x: int) -> torch.Tensor:
        return torch.exp(
            _log_comb32(f32(m), f32(x)) + _log_comb32(f32(n - m), f32(k - x)) - _log_comb32(f32(n), f32(k))
        )

    p_obs = prob(a)
    terms = []
    for x in range(width):
        p_x = prob(x) if max(0, k + m - n) <= x <= min(k, m) else f32(0.0)
        terms.append(p_x if p_x <= p_obs else f32(0.0))
    return float(torch.stack(terms).unsqueeze(0).sum(dim=1)[0])
