"""Fisher exact test: our batched p-values against scipy.stats.fisher_exact, and the KTAE authors' float32 p-values."""

import numpy as np
import pytest
import torch
from scipy.stats import fisher_exact

from verl_credit.core.fisher import (
    EXACT_MAX_N,
    fisher_authors,
    fisher_authors_loop,
    fisher_exact_two_sided,
    fisher_exact_two_sided_loop,
)


def _scipy(tables):
    return np.array([fisher_exact([[a, b], [c, d]], alternative="two-sided")[1] for a, b, c, d in tables])


def _ours(tables):
    t = torch.as_tensor(np.asarray(tables), dtype=torch.int64)
    return fisher_exact_two_sided(t[:, 0], t[:, 1], t[:, 2], t[:, 3]).numpy()


def _random_tables(rng, count, n_max):
    """Tables with N <= n_max, like KTAE's: a group of N rollouts split by class and by presence."""
    out = []
    for _ in range(count):
        n = int(rng.integers(1, n_max + 1))
        cells = rng.multinomial(n, rng.dirichlet(np.ones(4)))
        out.append(tuple(int(x) for x in cells))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_on_random_tables_up_to_64(seed):
    rng = np.random.default_rng(seed)
    tables = _random_tables(rng, 2000, 64)
    ours, ref = _ours(tables), _scipy(tables)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-13)
    # p == 1 exactly decides F = 0 in KTAE: the set of p == 1 tables must be identical
    assert np.array_equal(ours == 1.0, ref == 1.0)


def test_matches_scipy_on_every_table_of_small_n():
    tables = [
        (a, b, c, d)
        for n in range(0, 13)
        for a in range(n + 1)
        for b in range(n + 1 - a)
        for c in range(n + 1 - a - b)
        for d in [n - a - b - c]
    ]
    tables = [t for t in tables if sum(t) > 0]
    ours, ref = _ours(tables), _scipy(tables)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-13)
    assert np.array_equal(ours == 1.0, ref == 1.0)


@pytest.mark.parametrize(
    "table",
    [
        (0, 0, 5, 3),
        (5, 3, 0, 0),
        (0, 4, 0, 7),
        (4, 0, 7, 0),
        (16, 0, 0, 16),
        (0, 16, 16, 0),
        (1, 0, 0, 0),
        (32, 0, 0, 32),
        (0, 0, 0, 64),
        (8, 8, 8, 8),
        (1, 15, 15, 1),
    ],
)
def test_edge_tables(table):
    assert _ours([table])[0] == pytest.approx(_scipy([table])[0], rel=1e-12, abs=1e-15)
    assert _ours([table])[0] == pytest.approx(fisher_exact_two_sided_loop(*table), rel=1e-12)


def test_zero_row_or_column_gives_exactly_one():
    p = _ours([(0, 0, 3, 4), (0, 3, 0, 4), (3, 4, 0, 0), (3, 0, 4, 0)])
    assert (p == 1.0).all()


def test_float_path_above_exact_limit_matches_scipy():
    rng = np.random.default_rng(7)
    tables = [t for t in _random_tables(rng, 400, 120)]
    tables.append((EXACT_MAX_N, 1, 1, EXACT_MAX_N))  # forces N > EXACT_MAX_N for the whole batch
    ours, ref = _ours(tables), _scipy(tables)
    np.testing.assert_allclose(ours, ref, rtol=1e-8, atol=1e-12)


def test_shapes_and_bad_input():
    a = torch.tensor([[1, 2], [3, 0]])
    p = fisher_exact_two_sided(a, a, a, a)
    assert p.shape == (2, 2) and p.dtype == torch.float64
    assert fisher_exact_two_sided(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="non-negative"):
        fisher_exact_two_sided(torch.tensor([-1]), torch.tensor([1]), torch.tensor([1]), torch.tensor([1]))


# ------------------------------------------------------------ the KTAE authors' float32 arithmetic


def _all_tables(n_max):
    return [
        (a, b, c, n - a - b - c)
        for n in range(1, n_max + 1)
        for a in range(n + 1)
        for b in range(n + 1 - a)
        for c in range(n + 1 - a - b)
    ]


def _narrowest_width(t):
    return min(t[0] + t[1], t[0] + t[2]) + 1


@pytest.mark.parametrize("width", [None, 9, 17])
def test_authors_vectorised_matches_loop_bit_for_bit(width):
    """Equal to the last bit: p == 1 exactly (F = 0) or a ulp off it (F ~ 0.135) is KTAE's branch."""
    tables = [t for t in _all_tables(12) if width is None or _narrowest_width(t) <= width]
    widths = [width or _narrowest_width(t) for t in tables]
    t = torch.tensor(tables)
    vec = fisher_authors(t[:, 0], t[:, 1], t[:, 2], t[:, 3], torch.tensor(widths))
    loop = torch.tensor([fisher_authors_loop(*tab, w) for tab, w in zip(tables, widths, strict=True)])
    assert vec.dtype == torch.float32
    assert torch.equal(vec, loop)


def test_authors_differs_from_exact_where_p_is_one_or_probabilities_tie():
    tables = _all_tables(16)
    t = torch.tensor(tables)
    widths = torch.tensor([_narrowest_width(tab) for tab in tables])
    authors = fisher_authors(t[:, 0], t[:, 1], t[:, 2], t[:, 3], widths).double()
    exact = torch.as_tensor(_ours(tables))
    # most tables whose exact p is 1 come out a few ulp off 1 (so KTAE's F is ~0.135, not 0) ...
    near_one = (exact == 1.0) & (authors != 1.0) & ((authors - 1.0).abs() < 1e-5)
    assert near_one.sum() > 0.5 * (exact == 1.0).sum()
    # ... the reverse never happens here ...
    assert not ((authors == 1.0) & (exact != 1.0)).any()
    # ... and exactly tied probabilities may round apart: [[1, 2], [1, 6]] has exact p = 1
    assert fisher_exact_two_sided_loop(1, 2, 1, 6) == 1.0
    assert fisher_authors_loop(1, 2, 1, 6, 3) == pytest.approx(0.5333, abs=1e-4)
    # below 1 the float32 sum is the exact one to 1e-5 but for rare dropped ties, never above it
    diff = (authors - exact)[exact < 1.0]
    assert (diff <= 1e-5).all()
    assert 0 < (diff < -1e-5).sum() < 0.01 * diff.numel()


def test_authors_shapes_broadcast_and_bad_input():
    a = torch.tensor([[1, 2], [3, 0]])
    p = fisher_authors(a, a, a, a, 7)
    assert p.shape == (2, 2) and p.dtype == torch.float32
    assert p[0, 0] == fisher_authors_loop(1, 1, 1, 1, 7)
    assert fisher_authors(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0), 1).shape == (0,)
    with pytest.raises(ValueError, match="non-negative"):
        fisher_authors(torch.tensor([-1]), torch.tensor([1]), torch.tensor([1]), torch.tensor([1]), 3)
    with pytest.raises(ValueError, match="width"):
        fisher_authors(torch.tensor([2]), torch.tensor([1]), torch.tensor([2]), torch.tensor([1]), 3)
