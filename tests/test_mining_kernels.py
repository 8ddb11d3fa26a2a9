"""The NumPy mining kernels, branch by branch, against the oracles in every label regime.

The kernels pick a branch by the largest number of positives per anchor (``SMALL_K``):
one pass per positive for few, a per-row sort and search for many.  Small batches
reach the second branch here by setting ``triplet_ref.mining._blocks.SMALL_K = 0``.
Each kernel has two bodies (``triplet_ref.mining.force_body``): the NumPy branches run
the pure-NumPy body; ``numba`` runs the compiled body (its pass per positive on these
small batches) and ``numba-mixed`` sends the rows with more than 3 positives to its
bucket pass (``_numba.COMPILED_K = 3``).
Also: the margin-rounding rule of issue #13 item 6 on every backend and implementation,
the softplus kernel's gradients, and ``np.longdouble`` embeddings (#13 item 13).
"""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import mining, oracles
from triplet_ref.mining import _blocks
from triplet_ref.mining.batch_all import batch_all_backward, batch_all_forward
from triplet_ref.mining.semihard import semihard_choice
from triplet_ref.testing.regimes import REGIMES, make_labels

# (SMALL_K, row-block elements, body): one pass per positive / per-row sort and search,
# in one row block or in blocks of a few rows (the kernels' block-local row/column
# bookkeeping), by the NumPy body; the numba body, its pass per positive alone or with
# the bucket pass for the rows with more than 3 positives
BRANCHES = {"few": (16, None, "numpy"), "many": (0, None, "numpy"), "few-blocks": (16, 64, "numpy"),
            "many-blocks": (0, 64, "numpy"), "numba": (16, None, "numba"), "numba-mixed": (16, None, "numba-3")}
TOL = {np.float32: 2e-4, np.float64: 1e-9}


@pytest.fixture(params=list(BRANCHES))
def branch(request, monkeypatch):
    small_k, block, body = BRANCHES[request.param]
    body, _, compiled_k = body.partition("-")
    if body == "numba" and not mining.numba_available():
        pytest.skip("numba is not installed (pip install 'triplet_ref[numba]')")
    if compiled_k:  # rows with more positives: the numba body's bucket pass
        from triplet_ref.mining import _numba

        monkeypatch.setattr(_numba, "COMPILED_K", int(compiled_k))
    monkeypatch.setattr(_blocks, "SMALL_K", small_k)
    if block is not None:
        monkeypatch.setattr(_blocks, "_BLOCK_ELEMENTS", block)
    with mining.force_body(body):
        yield request.param


def _batch(regime, B, dtype, seed, ties=False):
    y = make_labels(regime, B, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, 3))
    if ties:  # a coarse grid: many exactly equal distances
        x = np.round(x * 2) / 2
    return y, x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("regime", REGIMES)
def test_losses_match_oracle_in_every_regime(branch, regime, dtype):
    B = 23
    for seed, ties in ((0, False), (1, True)):
        y, x = _batch(regime, B, dtype, seed, ties)
        tol = TOL[dtype]
        for m in (1.0, 0.25):
            for soft in (False, True):
                got, info = tr.batch_all(y, x, m, soft=soft, reduction="none", return_info=True)
                want, winfo = oracles.batch_all(y, x, m, soft=soft, reduction="none", return_info=True)
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
                if not ties or dtype == np.float64:  # counts on exact ties need exact distances
                    assert int(info["num_positive"]) == winfo["num_positive"]
                np.testing.assert_allclose(tr.batch_all(y, x, m, soft=soft),
                                           oracles.batch_all(y, x, m, soft=soft), rtol=tol, atol=tol)
            got, info = tr.batch_semihard(y, x, m, reduction="none", return_info=True)
            want, winfo = oracles.batch_semihard(y, x, m, reduction="none", return_info=True)
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
            if dtype == np.float64 or not ties:
                np.testing.assert_array_equal(info["semihard_negative"], winfo["semihard_negative"])


def _torch_reference_grads(d, pos, neg, m, g, soft):
    """∂ Σ g ⊙ L / ∂d by torch autograd of the dense definition (float64)."""
    torch = pytest.importorskip("torch")
    dt = torch.tensor(d.astype(np.float64), requires_grad=True)
    t = dt[:, :, None] - dt[:, None, :] + m
    mask = torch.tensor(pos[:, :, None] & neg[:, None, :])
    h = torch.nn.functional.softplus(t) if soft else torch.relu(t)
    L = torch.where(mask, h, torch.zeros(())).sum(2)
    (L * torch.tensor(g.astype(np.float64))).sum().backward()
    return L.detach().numpy(), dt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("regime", ["pk4", "two_classes", "big_class_singletons", "random_singletons"])
def test_kernel_gradients(branch, regime, dtype):
    B = 19
    y, x = _batch(regime, B, np.float64, seed=3)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).astype(dtype)  # distinct: no ties
    pos = (y[:, None] == y[None]) & ~np.eye(B, dtype=bool)
    neg = y[:, None] != y[None]
    g = np.random.default_rng(4).standard_normal((B, B)).astype(dtype)
    tol = TOL[dtype]
    m = np.asarray(0.7, dtype=dtype)
    for soft in (False, True):
        want_L, want_g = _torch_reference_grads(d, pos, neg, float(m), g, soft)
        if soft:  # through the steps' kernels: the body the branch selects
            L, count, slope = mining.BATCH_ALL_SOFT.kernel.forward(d, pos, neg, m)
            got_g = mining.BATCH_ALL_SOFT.kernel.backward(d, pos, neg, m, g, slope)
            # slope = ∂L/∂m = Σ_n σ(t): the positive side of the gradient with g = 1
            _, g1 = _torch_reference_grads(d, pos, neg, float(m), np.ones_like(g), True)
            np.testing.assert_allclose(np.where(pos, slope, 0), np.where(pos, g1, 0), rtol=tol, atol=tol)
            np.testing.assert_array_equal(count, np.where(pos, neg.sum(1)[:, None], 0))
        else:
            L, count = mining.BATCH_ALL_HINGE.kernel.forward(d, pos, neg, m)
            got_g = mining.BATCH_ALL_HINGE.kernel.backward(d, pos, neg, m, g, count)
        np.testing.assert_allclose(L, want_L, rtol=tol, atol=tol)
        np.testing.assert_allclose(got_g, want_g, rtol=tol, atol=tol)


def test_semihard_kernel_ties_go_to_smallest_index(branch):
    # 1-D points on a grid: many equal distances, every choice decided by the tie rule
    y = np.array([0, 1, 0, 1, 1, 0, 2, 2, 0, 1, 2, 0])
    x = np.array([[0.0], [1.0], [1.0], [2.0], [0.0], [2.0], [1.0], [3.0], [0.0], [3.0], [2.0], [1.0]])
    for dtype in (np.float32, np.float64):
        _, info = tr.batch_semihard(y, x.astype(dtype), 1.0, reduction="none", return_info=True)
        _, winfo = oracles.batch_semihard(y, x, 1.0, reduction="none", return_info=True)
        np.testing.assert_array_equal(info["semihard_negative"], winfo["semihard_negative"])


# --- issue #13 item 6: a margin below the distances' rounding step ----------------------

def test_thresholds_decide_like_the_oracle():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        dp = np.concatenate([rng.random(2000) * 10, [0.0, 1.0, 3.0, 1e-30, 7.0]]).astype(dtype)
        for m in (0.0, 1e-20, 1e-8, 1e-3, 1.0, 1e3, 1e30):
            tau = _blocks.thresholds(dp, m)
            mm = dtype(m)
            for x in (tau, np.nextafter(tau, np.asarray(-np.inf, dtype))):
                # the rule (dp − x) + m > 0 flips exactly at τ
                rule = (dp - x) + mm > 0
                np.testing.assert_array_equal(rule, x < tau)


@pytest.mark.parametrize("impl", ["portable", "auto"])  # auto: the native kernel where there is one
def test_margin_below_rounding_step_keeps_ties_positive(xp, impl):
    # d(0,1) = d(0,2) = 1: the triplet (0, 1, 2) has d_ap − d_an + m = 1e-20 > 0, positive
    y = [0, 0, 1]
    x = xp.asarray([[0.0], [1.0], [1.0]], dtype="float64")
    want, winfo = oracles.batch_all(y, [[0.0], [1.0], [1.0]], 1e-20, return_info=True)
    assert want == 0.5 and winfo["num_positive"] == 2
    with mining.force(impl):
        got, info = tr.batch_all(xp.asarray(np.array(y)), x, 1e-20, return_info=True)
    assert float(xp.to_numpy(got)) == 0.5
    assert int(xp.to_numpy(info["num_positive"])) == 2


# --- issue #13 item 13: np.longdouble embeddings -----------------------------------------

@pytest.mark.parametrize("loss", ["batch_all", "batch_all_soft", "batch_hard", "batch_semihard",
                                  "batch_contrastive"])
def test_longdouble_embeddings(loss):
    y = np.array([0, 0, 1, 1, 2, 0, 2])
    x = np.random.default_rng(5).standard_normal((7, 4))
    kw = {"soft": True} if loss == "batch_all_soft" else {}
    name = "batch_all" if loss == "batch_all_soft" else loss
    got = getattr(tr, name)(y, x.astype(np.longdouble), 0.5, reduction="none", **kw)
    assert got.dtype == np.longdouble  # computed in the input's precision
    want = getattr(oracles, name)(y, x, 0.5, reduction="none", **kw)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-9, atol=1e-9)


# --- issue #9 item 3: the sorted branch (packed keys), per row group, in threads -----------

def _dense_reference(d, pos, neg, m, g):
    """The kernels' definitions, dense (B³), the hinge rule evaluated in ``d``'s dtype."""
    with np.errstate(invalid="ignore"):  # inf - inf
        return _dense_definitions(d, pos, neg, m, g)


def _dense_definitions(d, pos, neg, m, g):
    dt = d.dtype.type
    t = (d[:, :, None] - d[:, None, :]) + dt(m)  # (a, p, n)
    hit = pos[:, :, None] & neg[:, None, :] & (t > 0)
    count = hit.sum(2)
    L = np.where(hit, (d[:, :, None].astype(np.float64) + float(dt(m))) - d[:, None, :], 0).sum(2)
    grad = g * count - np.einsum("apn,ap->an", hit, g.astype(np.float64))
    # semi-hard: the nearest negative strictly farther (first index), else the farthest
    far = np.where(neg[:, None, :] & (d[:, None, :] > d[:, :, None]), d[:, None, :], np.inf)
    nearest = far.argmin(2)
    strict = np.isfinite(far.min(2)) & pos
    fallback = np.where(neg, d, -np.inf).argmax(1)
    chosen = np.where(strict, nearest, fallback[:, None])
    term = pos & neg.any(1)[:, None]
    return L, count, grad, np.where(term, chosen, 0), strict & term, term


def _mixed_batch(dtype, seed, ties):
    """P×K (K = 4) plus one class of 40: rows of both branches in every row block."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.repeat(np.arange(20), 4), np.full(40, 99)])
    y = y[rng.permutation(y.size)]
    B = y.size
    d = rng.random((B, B)) * 4
    if ties:  # a coarse grid: many equal distances (negatives tie with positives)
        d = np.round(d * 2) / 2
    d = d.astype(dtype)
    d[rng.random((B, B)) < 0.05] = -0.0  # -0.0 equals +0.0
    np.fill_diagonal(d, 0)
    pos = (y[:, None] == y[None, :]) & ~np.eye(B, dtype=bool)
    neg = y[:, None] != y[None, :]
    g = rng.standard_normal((B, B)).astype(dtype)
    return d, pos, neg, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("small_k", [16, 0])
def test_sorted_branch_matches_the_dense_definition(monkeypatch, dtype, small_k):
    """Rows with 3 and 39 positives share row blocks (blocks of 7 rows, sub-blocks of 2,
    run in threads): the few-positives branch and the sorted one (float32: packed keys;
    float64: per row) give the definitions' values, counts, grads and choices exactly."""
    monkeypatch.setattr(_blocks, "SMALL_K", small_k)
    monkeypatch.setattr(_blocks, "_BLOCK_ELEMENTS", 7 * 120)
    monkeypatch.setattr(_blocks, "_SORT_BLOCK_ELEMENTS", 2 * 120)
    monkeypatch.setattr(_blocks, "THREAD_MIN_ELEMENTS", 0)
    for seed, ties in ((0, False), (1, True)):
        d, pos, neg, g = _mixed_batch(dtype, seed, ties)
        for m in (0.5, 0.0):
            L_ref, count_ref, grad_ref, chosen_ref, semi_ref, term = _dense_reference(d, pos, neg, m, g)
            L, count = batch_all_forward(d, pos, neg, np.asarray(m, dtype=dtype))
            np.testing.assert_array_equal(count, count_ref)
            np.testing.assert_allclose(L, L_ref, rtol=TOL[dtype], atol=TOL[dtype])
            grad = batch_all_backward(d, pos, neg, np.asarray(m, dtype=dtype), g, count)
            np.testing.assert_allclose(grad, grad_ref, rtol=TOL[dtype], atol=TOL[dtype])
        chosen, semi = semihard_choice(d, neg, term)
        np.testing.assert_array_equal(chosen, chosen_ref)
        np.testing.assert_array_equal(semi, semi_ref)


def test_sorted_branch_falls_back_per_row_for_negative_and_infinite_values(monkeypatch):
    """Packed keys need values >= 0: a negative distance sends its sub-block to the per-row
    branch; an infinite one keeps the packed keys (running sums in float64)."""
    monkeypatch.setattr(_blocks, "SMALL_K", 0)
    monkeypatch.setattr(_blocks, "_SORT_BLOCK_ELEMENTS", 4 * 120)
    d, pos, neg, g = _mixed_batch(np.float32, 2, ties=True)
    d[5, :] -= 1.0  # row 5 has negative values: per-row branch for its sub-block
    d[17, np.flatnonzero(neg[17])[:3]] = np.inf  # row 17: an infinitely far negative
    L_ref, count_ref, grad_ref, chosen_ref, semi_ref, term = _dense_reference(d, pos, neg, 0.5, g)
    L, count = batch_all_forward(d, pos, neg, np.float32(0.5))
    np.testing.assert_array_equal(count, count_ref)
    np.testing.assert_allclose(L, L_ref, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(batch_all_backward(d, pos, neg, np.float32(0.5), g, count), grad_ref,
                               rtol=2e-4, atol=2e-4)
    chosen, semi = semihard_choice(d, neg, term)
    np.testing.assert_array_equal(semi, semi_ref)
    # an infinite negative is "strictly farther" than every finite positive
    np.testing.assert_array_equal(chosen, chosen_ref)


def test_running_sums_are_exact_fixed_point_or_float64():
    rng = np.random.default_rng(0)
    for reverse in (False, True):
        x = (rng.standard_normal((5, 300)) * 10.0 ** rng.integers(-3, 4, (5, 1))).astype(np.float32)
        want = np.cumsum(x[:, ::-1] if reverse else x, axis=1, dtype=np.float64)
        want = want[:, ::-1] if reverse else want
        np.testing.assert_allclose(_blocks.running_sums(x, reverse), want, rtol=1e-12, atol=1e-9)
        x[2, 7] = np.inf  # not finite: a float64 running sum
        got = _blocks.running_sums(x, reverse)
        assert np.isinf(got[2, 7]) and np.isfinite(got[1]).all()
    assert not _blocks.running_sums(np.zeros((2, 3), np.float32)).any()


def test_thresholds_signed_zero_and_longdouble_decide_like_the_oracle():
    # a sign bit in dp + m (-0.0 + -0.0) or a dtype without a bit-pattern step
    # (np.longdouble): the nextafter path; the rule holds for every x >= 0
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64, np.longdouble):
        dp = np.concatenate([np.abs(rng.standard_normal(500)) * 3, [-0.0, 0.0, 1e-30]]).astype(dtype)
        for m in (0.0, -0.0, 1e-20, 0.3):
            tau = _blocks.thresholds(dp, m)
            for x in (tau, np.nextafter(tau, np.asarray(-np.inf, dtype)), np.zeros_like(tau)):
                x = np.maximum(x, 0)
                np.testing.assert_array_equal((dp - x) + dtype(m) > 0, x < tau)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_semihard_kernel_term_without_negatives(monkeypatch, dtype):
    # a row whose terms have no negative at all: index 0, not semi-hard, on every branch
    monkeypatch.setattr(_blocks, "SMALL_K", 0)
    d = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], dtype=dtype)
    term = np.array([[False, True, True], [True, False, False], [False, False, False]])
    neg = np.array([[False, False, False], [False, False, True], [False, False, False]])
    chosen, semi = semihard_choice(d, neg, term)
    np.testing.assert_array_equal(chosen, [[0, 0, 0], [2, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(semi, [[False, False, False], [True, False, False], [False] * 3])
    # the fused sums take those terms with index 0 too: args (1 − 0) + m, (2 − 0) + m, (1 − 3) + m
    from triplet_ref.mining.semihard_sums import semihard_forward

    total, active, n_semi, chosen2 = semihard_forward(d, neg, term, 0.5)
    np.testing.assert_array_equal(chosen2, chosen)
    assert (float(total), int(active), int(n_semi)) == (1.5 + 2.5, 2, 1)
    # no negative in the whole (sub-)block: every term index 0, its sum against column 0
    neg[:] = False
    total, active, n_semi, chosen = semihard_forward(d, neg, term, 0.5)
    np.testing.assert_array_equal(chosen, np.zeros((3, 3)))
    assert (float(total), int(active), int(n_semi)) == (1.5 + 2.5 + 0.5, 3, 0)


@pytest.mark.parametrize("values", ["spread", "grid", "equal", "far_tails", "inf_nan"])
def test_ranks_in_sorted_negatives_match_a_search(values):
    """The sorted branches' ranks (pure-NumPy body, ``mining._ranks``): each query's count of
    the row's negatives below it (strict) or at most it, against ``np.searchsorted`` on the
    row's sorted negatives — spread values (one scan step), a coarse grid and all-equal
    values (crowded buckets: the binary search), a few far values (the end buckets), +inf
    and NaN (their bit patterns order after every finite value), rows with unequal numbers
    of negatives (padding) or none, and few queries (a binary search each)."""
    from triplet_ref.mining import _ranks

    rng = np.random.default_rng(7)
    rows, C = 9, 300
    v = rng.random((rows, C)) * 10
    if values == "grid":
        v = np.round(v)
    elif values == "equal":
        v[:] = 2.5
    elif values == "far_tails":
        v[:, :4] = 1e6
    elif values == "inf_nan":
        v[rng.random((rows, C)) < 0.1] = np.inf
        v[rng.random((rows, C)) < 0.05] = np.nan
    v = v.astype(np.float32)
    bits = v.view(np.uint32)
    for equal_rows in (True, False):
        neg = np.zeros((rows, C), dtype=bool)
        if equal_rows:  # the same count per row: only the negatives are sorted
            for r in range(rows):
                neg[r, rng.choice(C, 150, replace=False)] = True
        else:
            neg = rng.random((rows, C)) < rng.random((rows, 1))
            neg[3] = False  # a row without negatives
        for columns in (False, True):
            s, n = _ranks.sorted_negatives(bits, neg, columns)
            sv = _ranks.high_halves(s) if columns else s
            want_sorted = [np.sort(bits[r][neg[r]]) for r in range(rows)]
            for r in range(rows):
                np.testing.assert_array_equal(sv[r, : n[r]], want_sorted[r])
                if columns:  # ties in column order
                    cols = np.flatnonzero(neg[r])
                    order = np.lexsort((cols, bits[r, cols]))
                    np.testing.assert_array_equal(_ranks.low_halves(s)[r, : n[r]], cols[order])
            for nq in (3 * rows, rows * C):  # few queries (binary search each) / many (buckets)
                qrow = np.sort(rng.integers(0, rows, nq))
                q = bits[qrow, rng.integers(0, C, nq)]
                for strict in (True, False):
                    got = _ranks.ranks(sv, n, qrow, q, strict)
                    want = [np.searchsorted(want_sorted[r], x, side="left" if strict else "right")
                            for r, x in zip(qrow, q)]
                    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.longdouble])
def test_thresholds_step_down_where_dp_plus_m_rounds_up(dtype):
    """``fl(dp + m)`` can round above the boundary of the oracle's rule (``τ`` one float
    lower: a margin of the other sign or magnitude than ``dp``); the thresholds (NumPy:
    bit steps, or ``nextafter`` for ``np.longdouble``; the numba body's scalar ``_tau``)
    still decide ``(dp − x) + m > 0 ⇔ x < τ`` at ``τ`` and the float below it."""
    rng = np.random.default_rng(0)
    down = np.asarray(-np.inf, dtype)
    lowered = 0
    for _ in range(300):
        dp = (rng.random(200) * 10.0 ** rng.integers(-5, 5)).astype(dtype)
        m = dtype(rng.standard_normal() * 10.0 ** rng.integers(-8, 3))
        tau = _blocks.thresholds(dp, m)
        t = dp + m
        lowered += int(np.count_nonzero((tau < t) & (t > 0)))
        for x in (tau, np.nextafter(tau, down)):
            x = np.maximum(x, dtype(0))
            np.testing.assert_array_equal((dp - x) + m > 0, x < tau)
        if dtype != np.longdouble and mining.numba_available() and _ < 20:
            from triplet_ref.mining import _numba_kernels as k

            inf = dtype(np.inf)
            got = np.array([k._tau(a, m, inf, -inf) for a in dp], dtype=dtype)
            np.testing.assert_array_equal(got, tau)
    assert lowered > 0  # the step down ran


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thresholds_where_a_negative_margin_cancels_most_of_dp(dtype):
    """A margin of the other sign that cancels most of ``dp`` (``fl(dp − x)`` flat over
    many floats ``x``): ``τ`` lies far below ``fl(dp + m)``, past any fixed number of
    steps. The NumPy thresholds and the numba body's scalar ``_tau`` (both bisect there)
    decide ``(dp − x) + m > 0 ⇔ x < τ`` at ``τ`` and the float below it."""
    rng = np.random.default_rng(1)
    dp = np.concatenate([[dtype(0.38144156)], (rng.random(300) * 10.0 ** rng.integers(-3, 4, 300))]).astype(dtype)
    m = np.concatenate([[dtype(-0.36424822)], -dp[1:] * (1 - 10.0 ** rng.uniform(-6, -1, 300))]).astype(dtype)
    down = np.asarray(-np.inf, dtype)
    far = 0
    use_numba = mining.numba_available()
    if use_numba:
        from triplet_ref.mining import _numba_kernels as k
    for a, mm in zip(dp, m):
        tau = _blocks.thresholds(np.array([a]), mm)[0]
        t = a + mm
        far += int(t > 0 and tau < np.nextafter(np.nextafter(np.nextafter(np.nextafter(t, down), down), down), down))
        for x in (tau, np.nextafter(tau, down)):
            x = max(x, dtype(0))
            assert ((a - x) + mm > 0) == (x < tau), (a, mm, tau)
        if use_numba:
            assert k._tau(a, mm, dtype(np.inf), dtype(-np.inf)) == tau, (a, mm)
    assert far > 0  # the bisection ran


def test_flat_refuses_a_strided_block():
    with pytest.raises(RuntimeError, match="not C-contiguous"):
        _blocks.flat(np.zeros((4, 4))[:, ::2])


def test_numba_body_without_numba_raises_import_error(monkeypatch):
    """numba not importable: ``auto`` runs NumPy, a forced numba body raises ImportError."""
    import sys

    from triplet_ref.mining import _numba

    assert repr(mining.BATCH_ALL_HINGE.kernel.forward) == "<accelerated kernel batch_all_forward>"
    monkeypatch.setattr(_numba, "_kernels", None)
    monkeypatch.setattr(_numba, "_import_error", None)
    monkeypatch.setitem(sys.modules, "triplet_ref.mining._numba_kernels", None)  # import fails
    monkeypatch.delattr(mining, "_numba_kernels", raising=False)
    assert not mining.numba_available()
    d = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    neg = ~np.eye(2, dtype=bool)
    term = np.zeros((2, 2), dtype=bool)
    with mining.force_body("auto"):
        mining.SEMIHARD_CHOICE.kernel.forward(d, neg, term)  # NumPy
    with pytest.raises(ImportError, match="numba cannot be imported"):
        mining.SEMIHARD_CHOICE.kernel.forward.numba(d, neg, term)
    with mining.force_body("numba"), pytest.raises(ImportError, match="numba"):
        mining.SEMIHARD_CHOICE.kernel.forward(d, neg, term)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_body_with_nan_negatives(dtype):
    """The numba body where a row's negatives are NaN: the semi-hard choice takes the first
    negative when every negative is NaN (never semi-hard), like the NumPy body's choice;
    the soft backward is NaN at a NaN negative and equals the NumPy body elsewhere."""
    if not mining.numba_available():
        pytest.skip("numba is not installed (pip install 'triplet_ref[numba]')")
    rng = np.random.default_rng(11)
    y = make_labels("pk4", 24, seed=3)
    B = y.size
    x = rng.standard_normal((B, 3))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).astype(dtype)
    pos = (y[:, None] == y[None]) & ~np.eye(B, dtype=bool)
    neg = y[:, None] != y[None]
    term = pos & neg.any(1)[:, None]
    d[2, neg[2]] = np.nan  # row 2: every negative NaN
    d[5, np.flatnonzero(neg[5])[:3]] = np.nan  # row 5: three NaN negatives
    chosen, semi = mining.SEMIHARD_CHOICE.kernel.forward.numba(d, neg, term)
    want, _ = mining.SEMIHARD_CHOICE.kernel.forward.numpy(d, neg, term)
    first = np.flatnonzero(neg[2])[0]
    np.testing.assert_array_equal(chosen[2][term[2]], first)
    assert not semi[2].any()
    np.testing.assert_array_equal(chosen[term], want[term])
    m = dtype(0.5)
    g = rng.standard_normal((B, B)).astype(dtype)
    L, count, slope = mining.BATCH_ALL_SOFT.kernel.forward.numpy(d, pos, neg, m)
    got = mining.BATCH_ALL_SOFT.kernel.backward.numba(d, pos, neg, m, g, slope)
    ref = mining.BATCH_ALL_SOFT.kernel.backward.numpy(d, pos, neg, m, g, slope)
    assert np.isnan(got[5, np.flatnonzero(neg[5])[:3]]).all()
    np.testing.assert_allclose(got, ref, rtol=TOL[dtype], atol=TOL[dtype])  # NaN where NaN
