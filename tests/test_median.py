"""The geometric-median solver against an oracle (scipy.optimize) and its defining properties."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize
from scipy.spatial import Delaunay

import gmlib.median
from gmlib import distance_sums, geometric_median
from gmlib.median import distances_to, median_objective

FAST = settings(max_examples=40, deadline=None)


def point_sets(min_n=1, max_n=12, min_d=1, max_d=5):
    return st.tuples(st.integers(min_n, max_n), st.integers(min_d, max_d)).flatmap(
        lambda nd: arrays(np.float64, nd, elements=st.floats(-100, 100, allow_nan=False, width=64)))


def scipy_median(X, w=None):
    w = np.ones(len(X)) if w is None else w
    f = lambda y: float((w * np.linalg.norm(X - y, axis=1)).sum())
    best = min(X, key=f)  # start from both the best data point and the mean, keep the better
    runs = [minimize(f, x0, method="Nelder-Mead", options=dict(xatol=1e-12, fatol=1e-13, maxiter=40000))
            for x0 in (best, X.mean(0))]
    return min(r.fun for r in runs + [type("R", (), {"fun": f(best)})])


@FAST
@given(point_sets(min_n=1, max_n=10, max_d=4))
def test_objective_never_above_best_data_point(X):
    X = torch.from_numpy(X)
    y = geometric_median(X)
    best = min(float(median_objective(X, x)) for x in X)
    assert float(median_objective(X, y)) <= best * (1 + 1e-9) + 1e-9


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 9), st.integers(1, 4))
def test_matches_scipy_minimize(seed, n, d):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10)
    w = rng.uniform(0.1, 3.0, size=n)
    ours = float(median_objective(torch.from_numpy(X), geometric_median(torch.from_numpy(X), torch.from_numpy(w)),
                                  torch.from_numpy(w)))
    oracle = scipy_median(X, w)
    assert ours <= oracle * (1 + 1e-5)  # never worse than the oracle
    # and the oracle is a real one: it lands on the same minimum (a broken oracle would make the line above vacuous)
    assert ours >= oracle * (1 - 1e-3)


def random_rotation(d, rng):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 15), st.integers(2, 5))
def test_equivariant_under_translation_rotation_scaling(seed, n, d):
    # points in general position (d >= 2, not collinear) have a unique median, so it must move with them
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Q, b, s = random_rotation(d, rng), rng.normal(size=d) * 10, rng.uniform(0.01, 100)
    y = geometric_median(torch.from_numpy(X)).numpy()
    y2 = geometric_median(torch.from_numpy(s * X @ Q.T + b)).numpy()
    spread = np.linalg.norm(X - X.mean(0), axis=1).mean() + 1e-12
    assert np.linalg.norm(y2 - (s * Q @ y + b)) <= 1e-5 * s * spread + 1e-9 * np.linalg.norm(b)


@FAST
@given(st.integers(0, 10_000), st.integers(3, 20))
def test_inside_convex_hull_2d(seed, n):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) * rng.uniform(0.5, 5, size=2)
    y = geometric_median(torch.from_numpy(X)).numpy()
    hull = Delaunay(X)
    # a point of the hull's boundary can be off by rounding: nudge it a hair towards the centroid
    y_in = y + 1e-9 * (X.mean(0) - y)
    assert hull.find_simplex(y_in) >= 0


def test_single_point_is_its_own_median():
    x = torch.tensor([[1.5, -2.0, 3.0]])
    assert torch.equal(geometric_median(x), x[0])


def test_two_points_give_a_point_on_the_segment():
    X = torch.tensor([[0.0, 0.0], [4.0, 2.0]], dtype=torch.float64)
    y = geometric_median(X)
    assert float(median_objective(X, y)) == pytest.approx(float(torch.linalg.vector_norm(X[1] - X[0])), rel=1e-12)


def test_two_unequal_weights_pick_the_heavier_point():
    X = torch.tensor([[0.0, 0.0], [4.0, 2.0]], dtype=torch.float64)
    assert torch.equal(geometric_median(X, torch.tensor([1.0, 3.0])), X[1])


@pytest.mark.parametrize("n", [3, 5, 7, 9])
def test_collinear_odd_count_gives_the_middle_point(n):
    t = torch.tensor(sorted(np.random.default_rng(n).uniform(-10, 10, size=n)), dtype=torch.float64)
    direction = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)
    X = t[:, None] * direction + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.allclose(geometric_median(X), X[n // 2], atol=1e-12)


def test_duplicates_act_as_weights():
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    merged = geometric_median(X[:3], torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64))
    assert torch.allclose(geometric_median(X), merged, atol=1e-9)
    assert torch.equal(geometric_median(X), X[2])  # weight 3 of 5 outweighs the pull of the others


def test_point_exactly_at_the_median():
    # a centre surrounded symmetrically: the mean starts exactly on a data point, which is the median
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    assert torch.equal(geometric_median(X), X[0])
    # an off-centre data point that is the median (the others pull with total force < 1)
    X = torch.tensor([[0.3, 0.2], [5.0, 0.0], [-5.0, 0.1], [0.0, 6.0]], dtype=torch.float64)
    y = geometric_median(X)
    best = min(float(median_objective(X, x)) for x in X)
    assert float(median_objective(X, y)) <= best + 1e-12


def test_batched_equals_one_by_one():
    X = torch.randn(4, 30, 7, dtype=torch.float64)
    batched = geometric_median(X)
    for b in range(4):
        assert torch.allclose(batched[b], geometric_median(X[b]), atol=1e-10)


def test_keeps_dtype_and_works_in_float32():
    X = torch.randn(64, 27)
    y = geometric_median(X)
    assert y.dtype == torch.float32 and y.shape == (27,)
    y64 = geometric_median(X.double())
    assert torch.allclose(y.double(), y64, atol=1e-4)


def test_distance_sums_match_a_loop():
    X = torch.randn(20, 6, dtype=torch.float64)
    loop = torch.tensor([sum(float(torch.linalg.vector_norm(a - b)) for a in X) for b in X], dtype=torch.float64)
    assert torch.allclose(distance_sums(X), loop, atol=1e-8)
    assert distance_sums(X.reshape(2, 10, 6)).shape == (2, 10)


def test_distance_sums_lowest_is_most_central():
    X = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert int(distance_sums(X).argmin()) in (1, 2)


@pytest.mark.parametrize("bad, match", [
    (torch.empty(0, 3), "empty"),
    (torch.empty(3, 0), "empty"),
    (torch.tensor([[0.0, float("nan")]]), "NaN"),
    (torch.tensor([[0.0, float("inf")]]), "inf"),
    (torch.zeros(3), r"shape \(n, d\)"),
])
def test_bad_points(bad, match):
    with pytest.raises(ValueError, match=match):
        geometric_median(bad)
    with pytest.raises(ValueError, match=match):
        distance_sums(bad)


def test_points_must_be_a_tensor():
    with pytest.raises(TypeError, match="points"):
        geometric_median([[0.0, 1.0]])


@pytest.mark.parametrize("weights, match", [
    (torch.ones(4), "shape"),
    (torch.tensor([1.0, -1.0, 1.0]), "non-negative"),
    (torch.zeros(3), "all be zero"),
    (torch.tensor([1.0, float("nan"), 1.0]), "NaN"),
])
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        geometric_median(torch.randn(3, 2), weights)


def test_bad_solver_settings():
    with pytest.raises(ValueError, match="tol"):
        geometric_median(torch.randn(3, 2), tol=0)
    with pytest.raises(ValueError, match="max_iter"):
        geometric_median(torch.randn(3, 2), max_iter=0)


def test_median_at_a_data_point_next_to_a_closer_decoy():
    # found by hypothesis: the iterate stops a hair from the true median (0, weight 3) and a decoy data point lies
    # even closer; the final optimality test must look past the nearest point
    X = torch.tensor([[-1.0], [-5.96046448e-08], [0.0], [0.0], [0.0]], dtype=torch.float64)
    assert torch.equal(geometric_median(X), X[2])


def _gm_direct(X, monkeypatch):
    """The median with every distance summed directly (the matrix-vector shortcut of large sets turned off)."""
    with monkeypatch.context() as m:
        m.setattr(gmlib.median, "_FAST", 2 ** 62)
        return geometric_median(X)


@pytest.mark.parametrize("shift", [0.5, 1e3])
def test_large_sets_take_the_fast_path_without_losing_accuracy(shift, monkeypatch):
    # n d >= 2^15: distances come from ||x||^2 - 2 x.y + ||y||^2 unless that could cancel (shift: all points far
    # from the origin compared with their spread, so the shortcut must step aside)
    torch.manual_seed(0)
    X = torch.randn(128, 288) * (0.5 + torch.rand(128, 1)) + shift  # conv-like: 128 filters of 32x3x3
    assert X.numel() >= gmlib.median._FAST and X.shape[0] * X.numel() > gmlib.median._MEDOID_CHECK
    calls = []
    with monkeypatch.context() as m:
        m.setattr(torch, "cdist", lambda *a, **k: calls.append(1) or torch.functional.cdist(*a, **k))
        y = geometric_median(X)
    assert (len(calls) == 0) == (shift < 1)  # the shortcut was taken exactly when it is safe
    ref = _gm_direct(X, monkeypatch)
    scale = torch.linalg.vector_norm(X - ref, dim=1).mean()
    assert torch.linalg.vector_norm(y - ref) <= 1e-5 * scale
    Xd = X.double()
    assert median_objective(Xd, y.double()) <= median_objective(Xd, ref.double()) * (1 + 1e-7)


@pytest.mark.parametrize("shape", [(7, 3), (256, 288), (4, 128, 72)])
def test_distances_to_matches_the_direct_sum(shape):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(*shape, generator=g) + 0.3
    y = torch.randn(*shape[:-2], shape[-1], generator=g) * 0.1
    d = distances_to(X, y)
    direct = torch.linalg.vector_norm(X.double() - y.double().unsqueeze(-2), dim=-1)
    assert d.shape == shape[:-1]
    torch.testing.assert_close(d.double(), direct, rtol=1e-6, atol=0)
