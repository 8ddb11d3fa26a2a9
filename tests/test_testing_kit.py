"""The conformance kit ``triplet_ref.testing.check_loss`` judged on known answers.

* its variant definitions with no flag are the oracles, and every flag changes some value
  of the catalog (so each variant is detectable at all);
* triplet_ref's own functions conform (numpy, torch, jax);
* correct implementations written independently here (dense B^3 in torch, plain loops in
  NumPy, dense jax.numpy) conform;
* implementations broken in one classic way each are flagged, with that variant's name
  and nothing else.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import oracles as O
from triplet_ref.testing import BEHAVIOURS, VARIANTS, assert_loss_conforms, check_loss, variant_name
from triplet_ref.testing import catalog as C
from triplet_ref.testing import variants as V
from triplet_ref.testing.kit import _oracle, _tolerance


def _name(key):
    return variant_name(key)


# --- the variant definitions -----------------------------------------------------------------

@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_variants_without_flags_are_the_oracles(metric):
    batches, _ = C.catalog(metric, 0.7)
    for b in batches:
        if "nan" in b.tags:
            assert math.isnan(V.evaluate("batch_all", b.labels, b.x, 0.7, metric=metric))
            continue
        for loss in V.LOSSES:
            if loss == "batch_contrastive" and metric != "euclidean":
                continue
            for soft in (False, True) if loss in ("batch_all", "batch_hard") else (False,):
                want = _oracle(loss, b.labels, b.x, 0.7, metric, soft)
                got = V.evaluate(loss, b.labels, b.x, 0.7, metric=metric, soft=soft)
                assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (b.name, loss, soft)


def test_variants_on_hand_computed_batches():
    # labels [0, 0, 1] at 0, 1, 3 (1-D), margin 3: anchor 2 has no positive
    y, x = np.array([0, 0, 1]), np.array([[0.0], [1.0], [3.0]])
    assert V.evaluate("batch_hard", y, x, 3.0) == O.batch_hard(y, x, 3.0) == 1.5
    # hp = 0 for anchor 2, hn = 2: h(3 - 2) = 1 joins the mean: (1 + 2 + 1) / 3
    assert V.evaluate("batch_hard", y, x, 3.0, flags={"no_positive_counted"}) == pytest.approx(4 / 3)
    # one class: the contract gives 0, the row-maximum rule gives the margin
    assert V.evaluate("batch_hard", [1, 1, 1], x, 0.25) == 0.0
    assert V.evaluate("batch_hard", [1, 1, 1], x, 0.25, flags={"no_negative_counted"}) == 0.25
    # semi-hard tie d(a,n) = d(a,p) = 1: strict picks the fallback n = 2 (d = 1), >= picks it too;
    # with a farther negative the strict rule skips the tie
    y2, x2 = np.array([0, 0, 1, 1]), np.array([[0.0], [1.0], [-1.0], [2.5]])
    # anchor 0, p = 1 (d 1): negatives at 1 (tie) and 2.5; strict -> 2.5, >= -> 1
    strict = V.evaluate("batch_semihard", y2, x2, 0.5, flags=set())
    ge = V.evaluate("batch_semihard", y2, x2, 0.5, flags={"semihard_ge"})
    assert strict == pytest.approx(O.batch_semihard(y2, x2, 0.5))
    assert ge > strict


@pytest.mark.parametrize("loss, soft", [("batch_all", False), ("batch_all", True), ("batch_hard", False),
                                        ("batch_hard", True), ("batch_semihard", False),
                                        ("batch_contrastive", False)])
def test_every_variant_changes_a_catalog_value(loss, soft):
    """Each flag alone moves at least one catalog value beyond the float32 tolerance (or
    turns it into NaN): a variant the catalog could not see would never be named."""
    margin = 1.0
    batches, skipped = C.catalog("euclidean", margin)
    assert not skipped
    for flag in V.flags_for(loss, "euclidean", soft):
        moved = []
        for b in batches:
            if "nan" in b.tags or (flag == "normalize" and b.exact):
                continue
            base = V.evaluate(loss, b.labels, b.x, margin, soft=soft)
            var = V.evaluate(loss, b.labels, b.x, margin, soft=soft, flags={flag})
            atol, rtol = _tolerance(loss, b.x, "euclidean", margin, "float32")
            if math.isnan(var) != math.isnan(base) or abs(var - base) > atol + rtol * abs(base):
                moved.append(b.name)
        assert moved, f"{loss} soft={soft}: no catalog batch shows variant {flag!r}"


def test_every_variant_and_behaviour_has_a_name_and_a_meaning():
    names = [v[0] for v in VARIANTS.values()] + [v[0] for v in BEHAVIOURS.values()]
    assert len(set(names)) == len(names)
    for table in (VARIANTS, BEHAVIOURS):
        for key, (name, what) in table.items():
            assert name and len(what) > 20, key


def test_check_loss_rejects_bad_arguments():
    f = lambda y, x: 0.0  # noqa: E731
    with pytest.raises(ValueError, match="loss"):
        check_loss(f, "batch_any")
    with pytest.raises(ValueError, match="soft"):
        check_loss(f, "batch_semihard", soft=True)
    with pytest.raises(ValueError, match="metric"):
        check_loss(f, "batch_contrastive", metric="cosine")
    with pytest.raises(ValueError, match="margin"):
        check_loss(f, "batch_all", margin=-1.0)
    with pytest.raises(TypeError, match="fn"):
        check_loss(None, "batch_all")


# --- dogfood: triplet_ref itself ---------------------------------------------------------------

_OWN = [("batch_all", False, "euclidean"), ("batch_all", True, "cosine"), ("batch_hard", False, "sqeuclidean"),
        ("batch_hard", True, "euclidean"), ("batch_semihard", False, "euclidean"),
        ("batch_contrastive", False, "euclidean")]


def _own(loss, margin, soft, metric):
    fn = getattr(tr, loss)
    kw = {} if loss == "batch_contrastive" else {"metric": metric}
    if soft:
        kw["soft"] = True
    return lambda y, x: fn(y, x, margin, **kw)


@pytest.mark.parametrize("loss, soft, metric", _OWN)
def test_triplet_ref_conforms_on_numpy(loss, soft, metric):
    assert_loss_conforms(_own(loss, 0.7, soft, metric), loss, backend="numpy", margin=0.7,
                         metric=metric, soft=soft)


# the default run takes three (the NumPy run above covers every loss's values); --runslow all
_TORCH_DEFAULT = {("batch_all", False, "euclidean"), ("batch_hard", True, "euclidean"),
                  ("batch_semihard", False, "euclidean")}


@pytest.mark.parametrize("loss, soft, metric", [
    c if c in _TORCH_DEFAULT else pytest.param(*c, marks=pytest.mark.slow) for c in _OWN])
def test_triplet_ref_conforms_on_torch_with_gradients(loss, soft, metric):
    pytest.importorskip("torch")
    rep = assert_loss_conforms(_own(loss, 1.0, soft, metric), loss, backend="torch", margin=1.0,
                               metric=metric, soft=soft)
    assert rep.runs >= 26 and not rep.notes, str(rep)  # every batch, both dtypes, gradients checked


def test_triplet_ref_conforms_on_jax_with_gradients():
    # jitted: one compilation per dtype (every catalog batch has the same shape)
    jax = pytest.importorskip("jax")
    assert_loss_conforms(jax.jit(_own("batch_all", 1.0, False, "euclidean")), "batch_all", backend="jax")


@pytest.mark.slow
@pytest.mark.parametrize("loss, soft, metric", _OWN)
def test_triplet_ref_conforms_on_jax_every_loss(loss, soft, metric):
    jax = pytest.importorskip("jax")
    assert_loss_conforms(jax.jit(_own(loss, 0.3, soft, metric)), loss, backend="jax", margin=0.3,
                         metric=metric, soft=soft)


def test_assert_loss_conforms_raises_with_the_report():
    f = _own("batch_hard", 1.0, False, "euclidean")
    with pytest.raises(AssertionError, match="DOES NOT CONFORM") as exc:
        assert_loss_conforms(f, "batch_hard", margin=0.5)  # built with margin 1, checked at 0.5
    assert "random_pk4x4 [float32]: expected" in str(exc.value)


# --- independent correct implementations, and broken ones -------------------------------------

def _torch_impls():
    torch = pytest.importorskip("torch")

    def dist(x, squared=False, normalize=False, naive_sqrt=False):
        if normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        diff = x[:, None, :] - x[None, :, :]
        d2 = (diff * diff).sum(-1)
        if squared:
            return d2
        if naive_sqrt:
            return torch.sqrt(d2)
        safe = torch.where(d2 > 0, d2, torch.ones_like(d2))
        return torch.where(d2 > 0, torch.sqrt(safe), torch.zeros_like(d2))

    def nan_guard(out, x):
        # the contract's NaN decision: NaN anywhere in the embeddings gives NaN (the safe
        # square root above maps a NaN distance to 0, so it must be explicit)
        return out + 0.0 * x.sum()

    def masks(y):
        same = y[:, None] == y[None, :]
        eye = torch.eye(len(y), dtype=torch.bool)
        return same & ~eye, ~same

    def batch_all(y, x, m=1.0, *, mean_all_valid=False, normalize=False, naive_sqrt=False,
                  squared=False, drop_nan=False):
        d = dist(x, squared, normalize, naive_sqrt)
        pos, neg = masks(y)
        valid = pos[:, :, None] & neg[:, None, :]
        l = torch.relu(d[:, :, None] - d[:, None, :] + m)
        terms = l[valid]
        n = terms.numel() if mean_all_valid else (terms > 0).sum()
        if drop_nan:
            terms = terms[terms > 0]
        if isinstance(n, int):
            out = terms.sum() / n if n else terms.sum() * 0.0
        else:
            out = torch.where(n > 0, terms.sum() / n.clamp(min=1), terms.sum() * 0.0)
        return out if drop_nan else nan_guard(out, x)

    def batch_hard(y, x, m=1.0, *, hp0=False, soft=False, overflow=False, detach_neg=False):
        d = dist(x)
        pos, neg = masks(y)
        has_pos, has_neg = pos.any(1), neg.any(1)
        if hp0:
            hp = (d * pos).max(1).values
        else:
            hp = torch.where(pos, d, torch.full_like(d, -torch.inf)).max(1).values
        hn = torch.where(neg, d, torch.full_like(d, torch.inf)).min(1).values
        if detach_neg:
            hn = hn.detach()
        term = has_neg if hp0 else has_pos & has_neg
        z = (hp - hn + m)[term]
        if soft:
            z = torch.log1p(torch.exp(z)) if overflow else torch.nn.functional.softplus(z)
        else:
            z = torch.relu(z)
        return nan_guard(z.sum() / term.sum().clamp(min=1), x)

    def batch_semihard(y, x, m=1.0, *, ge=False, nan_empty=False):
        d = dist(x)
        pos, neg = masks(y)
        has_neg = neg.any(1)
        dap, dan = d[:, :, None], d[:, None, :]
        outside = (dan >= dap) if ge else (dan > dap)
        cand = outside & neg[:, None, :]
        semi = torch.where(cand, dan.expand_as(cand), torch.full_like(cand, torch.inf, dtype=d.dtype)).min(2).values
        fb = torch.where(neg, d, torch.full_like(d, -torch.inf)).max(1).values[:, None]
        chosen = torch.where(cand.any(2), semi, fb.expand_as(semi))
        term = pos & has_neg[:, None]
        lv = torch.relu(d - torch.where(term, chosen, torch.zeros_like(chosen)) + m)[term]
        n = term.sum()
        return nan_guard(lv.sum() / n if nan_empty else lv.sum() / n.clamp(min=1), x)

    def batch_contrastive(y, x, m=1.0, *, unsquared=False):
        e = dist(x)
        same = y[:, None] == y[None, :]
        b = len(y)
        p = e if unsquared else e * e
        nn = torch.relu(m - e)
        nn = nn if unsquared else nn * nn
        off = ~torch.eye(b, dtype=torch.bool)
        total = torch.where(same, p, nn)[off].sum()
        return nan_guard(0.5 * total / max(b * (b - 1), 1), x)

    return dict(batch_all=batch_all, batch_hard=batch_hard, batch_semihard=batch_semihard,
                batch_contrastive=batch_contrastive)


@pytest.mark.parametrize("loss", ["batch_all", "batch_hard", "batch_semihard", "batch_contrastive"])
def test_dense_torch_implementations_conform(loss):
    impl = _torch_impls()[loss]
    assert_loss_conforms(lambda y, x: impl(y, x, 0.7), loss, backend="torch", margin=0.7)


@pytest.mark.slow
def test_soft_dense_torch_batch_hard_conforms():
    impl = _torch_impls()["batch_hard"]
    assert_loss_conforms(lambda y, x: impl(y, x, 0.2, soft=True), "batch_hard", backend="torch",
                         margin=0.2, soft=True)


def _loops_batch_hard(y, x, m):
    """Plain Python loops over a NumPy batch (float64 accumulation)."""
    y, x = np.asarray(y), np.asarray(x, dtype=np.float64)
    b = len(y)
    total, count, nan = 0.0, 0, bool(np.isnan(x).any())
    for a in range(b):
        hp, hn = None, None
        for j in range(b):
            dj = float(np.sqrt(((x[a] - x[j]) ** 2).sum()))
            if j != a and y[j] == y[a]:
                hp = dj if hp is None else max(hp, dj)
            elif y[j] != y[a]:
                hn = dj if hn is None else min(hn, dj)
        if hp is not None and hn is not None:
            total += max(hp - hn + m, 0.0)
            count += 1
    return np.float64(math.nan if nan else (total / count if count else 0.0))


def test_plain_loops_implementation_conforms():
    assert_loss_conforms(lambda y, x: _loops_batch_hard(y, x, 1.0), "batch_hard", backend="numpy")


def _jax_batch_all(naive_sqrt=False, mean_all_valid=False):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    @jax.jit
    def batch_all(y, x):
        diff = x[:, None, :] - x[None, :, :]
        d2 = (diff * diff).sum(-1)
        if naive_sqrt:
            d = jnp.sqrt(d2)
        else:
            safe = jnp.where(d2 > 0, d2, 1.0)
            d = jnp.where(d2 > 0, jnp.sqrt(safe), 0.0)
        same = y[:, None] == y[None, :]
        pos, neg = same & ~jnp.eye(len(y), dtype=bool), ~same
        valid = pos[:, :, None] & neg[:, None, :]
        lv = jnp.where(valid, jax.nn.relu(d[:, :, None] - d[:, None, :] + 1.0), 0.0)
        n = valid.sum() if mean_all_valid else (lv > 0).sum()
        out = jnp.where(n > 0, lv.sum() / jnp.maximum(n, 1), 0.0)
        return jnp.where(jnp.isnan(x).any(), jnp.nan, out)

    return batch_all


@pytest.mark.slow
def test_dense_jax_implementation_conforms_with_gradients():
    assert_loss_conforms(_jax_batch_all(), "batch_all", backend="jax")


def test_jax_implementation_with_two_mistakes_is_flagged_with_both():
    rep = check_loss(_jax_batch_all(naive_sqrt=True, mean_all_valid=True), "batch_all", backend="jax")
    assert rep.variant_keys == ("mean_all_valid", "nan_grad_zero_distance"), str(rep)
    assert not rep.ambiguous


# each classic mistake, alone: (loss, kwargs of the torch impl, check_loss kwargs, expected names)
_BROKEN = [
    ("batch_hard", {"hp0": True}, {}, ["no_positive_counted"]),
    ("batch_semihard", {"ge": True}, {}, ["semihard_ge"]),
    ("batch_all", {"normalize": True}, {}, ["normalize"]),
    ("batch_all", {"naive_sqrt": True}, {}, ["nan_grad_zero_distance"]),
    ("batch_all", {"mean_all_valid": True}, {}, ["mean_all_valid"]),
    ("batch_all", {"squared": True}, {}, ["squared"]),
    ("batch_all", {"drop_nan": True}, {}, ["nan_not_propagated", "nan_outside_terms_ignored"]),
    ("batch_semihard", {"nan_empty": True}, {}, ["empty_nan"]),
    ("batch_hard", {"soft": True, "overflow": True}, {"soft": True, "dtypes": ("float32",)}, ["softplus_overflow"]),
    ("batch_hard", {"detach_neg": True}, {}, ["grad_mismatch"]),
    ("batch_contrastive", {"unsquared": True}, {}, ["unsquared"]),
]


@pytest.mark.parametrize("loss, impl_kw, kw, expected", _BROKEN,
                         ids=[f"{b[0]}-{next(iter(b[1]))}" for b in _BROKEN])
def test_broken_implementation_is_flagged_with_its_variant(loss, impl_kw, kw, expected):
    impl = _torch_impls()[loss]
    if not any(k.startswith(("nan_grad", "grad")) for k in expected):
        kw = {"grad": False, "dtypes": ("float64",), **kw}  # a value variant: the values suffice
    rep = check_loss(lambda y, x: impl(y, x, 1.0, **impl_kw), loss, backend="torch", margin=1.0, **kw)
    assert not rep.ok
    assert list(rep.variant_keys) == expected, str(rep)
    assert not rep.ambiguous, str(rep)
    assert all(len(f.variants) == 1 and f.variants[0] in map(_name, expected) for f in rep.findings), str(rep)
    assert _name(expected[0]) in str(rep)


def test_numpy_broken_implementation_is_flagged():
    # the plain loops counting anchors without a negative as the row maximum (single-class
    # batches then give the margin), no gradients on NumPy
    def f(y, x):
        y, x = np.asarray(y), np.asarray(x, dtype=np.float64)
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        out = []
        for a in range(len(y)):
            pos = [d[a, j] for j in range(len(y)) if j != a and y[j] == y[a]]
            neg = [d[a, j] for j in range(len(y)) if y[j] != y[a]]
            if pos:
                out.append(max(max(pos) - (min(neg) if neg else d[a].max()) + 1.0, 0.0))
        return np.float64(np.nan if np.isnan(x).any() else (np.mean(out) if out else 0.0))

    rep = check_loss(f, "batch_hard", backend="numpy")
    assert rep.variant_keys == ("no_negative_counted",), str(rep)
    assert {f.case for f in rep.findings} >= {"one_class"}


def test_unknown_difference_is_reported_unexplained():
    impl = _torch_impls()["batch_all"]
    rep = check_loss(lambda y, x: impl(y, x, 1.0) * 1.01, "batch_all", backend="torch", grad=False)
    assert not rep.ok and rep.variant_keys == ()
    assert "not one of the known variants" in str(rep)


def test_a_failing_implementation_is_a_finding_not_a_crash():
    def f(y, x):
        if len(set(np.asarray(y).tolist())) == 1:
            raise RuntimeError("one class")
        return tr.batch_all(y, x)

    rep = check_loss(f, "batch_all")
    batches, _ = C.catalog("euclidean", 1.0)
    one_class = {b.name for b in batches if len(set(b.labels.tolist())) == 1}
    assert {"one_class", "nan_row_no_term"} <= one_class
    assert {f.case for f in rep.findings} == one_class
    assert all("RuntimeError" in f.what for f in rep.findings)


# --- the hypothesis strategies ----------------------------------------------------------------

def test_strategies_drive_a_differential_fuzz_against_the_oracle():
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings

    from triplet_ref.testing import strategies as S

    @settings(max_examples=8, deadline=None, derandomize=True)
    @given(S.batches(max_size=10))
    def prop(batch):
        y, x = batch
        assert x.shape[0] == y.shape[0] and x.dtype == np.float64
        for loss in ("batch_all", "batch_hard", "batch_semihard"):
            want = _oracle(loss, y, x, 0.5, "euclidean", False)
            got = V.evaluate(loss, y, x, 0.5)
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9 * max(1.0, float(np.abs(x).max()) ** 2))

    prop()


def test_embedding_kinds():
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings

    from triplet_ref.testing import strategies as S

    seen = set()

    @settings(max_examples=10, deadline=None, derandomize=True)
    @given(S.embeddings(8, 3, kind="duplicates"), S.embeddings(8, 2, kind="grid", dtype="float32"))
    def prop(dup, grid):
        assert dup.shape == (8, 3) and grid.dtype == np.float32
        assert len({tuple(r) for r in dup.tolist()}) <= 4  # rows repeated: at most B/2 distinct
        assert np.all(grid * 4 == np.round(grid * 4))
        seen.add(True)

    prop()
    assert seen
    @settings(max_examples=1, deadline=None)
    @given(S.embeddings(4, kind="bogus"))
    def bad(x):
        pass

    with pytest.raises(ValueError, match="kind"):
        bad()


def test_gradient_check_without_float64():
    # a backend without float64 (JAX without x64) still gets the finite-difference check, in
    # float32 with float32 tolerances: a detached hardest negative is caught
    impl = _torch_impls()["batch_hard"]
    rep = check_loss(lambda y, x: impl(y, x, 1.0, detach_neg=True), "batch_hard", backend="torch",
                     dtypes=("float32",))
    assert rep.variant_keys == ("grad_mismatch",), str(rep)
    assert [f.dtype for f in rep.findings] == ["float32"]


# --- TensorFlow peers, transcribed ----------------------------------------------------------
# TensorFlow is not a dependency: TF-Addons' triplet_semihard_loss (and tf.contrib's, which is
# the same code on squared distances) transcribed line by line into torch from
# tensorflow_addons/losses/triplet.py and metric_learning.py, to check the prose rows of
# docs/semantics.md about them with the kit.

def _tfa_semihard(squared):
    torch = pytest.importorskip("torch")

    def pairwise_distance(e):
        sq = (e * e).sum(1, keepdim=True)
        pds = torch.clamp(sq + sq.T - 2.0 * e @ e.T, min=0.0)
        error_mask = pds <= 0.0
        d = pds if squared else torch.sqrt(pds + error_mask.to(e.dtype) * 1e-16)
        d = d * (~error_mask).to(e.dtype)
        return d * (1.0 - torch.eye(e.shape[0], dtype=e.dtype))

    def masked_maximum(data, mask):
        mins = data.min(1, keepdim=True).values
        return ((data - mins) * mask).max(1, keepdim=True).values + mins

    def masked_minimum(data, mask):
        maxs = data.max(1, keepdim=True).values
        return ((data - maxs) * mask).min(1, keepdim=True).values + maxs

    def loss(y, e, margin=1.0):
        b = y.shape[0]
        labels = y.reshape(-1, 1)
        pdist = pairwise_distance(e)
        adjacency = labels == labels.T
        adjacency_not = ~adjacency
        tile = pdist.repeat(b, 1)
        mask = adjacency_not.repeat(b, 1) & (tile > pdist.T.reshape(-1, 1))
        mask_final = (mask.to(e.dtype).sum(1, keepdim=True) > 0.0).reshape(b, b).T
        outside = masked_minimum(tile, mask.to(e.dtype)).reshape(b, b).T
        inside = masked_maximum(pdist, adjacency_not.to(e.dtype)).repeat(1, b)
        semi = torch.where(mask_final, outside, inside)
        loss_mat = margin + pdist - semi
        mask_pos = adjacency.to(e.dtype) - torch.eye(b, dtype=e.dtype)
        return torch.clamp(loss_mat * mask_pos, min=0.0).sum() / mask_pos.sum()

    return loss


@pytest.mark.parametrize("squared, expected", [
    (False, ("empty_nan", "no_negative_counted")),             # TF-Addons
    (True, ("squared", "empty_nan", "no_negative_counted")),   # tf.contrib
])
def test_transcribed_tf_semihard_shows_the_documented_rows(squared, expected):
    rep = check_loss(_tfa_semihard(squared), "batch_semihard", backend="torch", dtypes=("float64",),
                     grad=False)
    assert rep.variant_keys == expected, str(rep)
    assert not rep.ambiguous, str(rep)
