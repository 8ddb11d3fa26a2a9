"""What only a fresh process shows (issue 13, items 1, 2 and 12): JAX in its default
32-bit mode (this suite enables ``jax_enable_x64`` in conftest.py), and threads that make
a process's first calls — importing the frameworks — at the same time.  Plus the same
32-bit checks in-process under a scoped ``jax.enable_x64(False)``."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import backends as B
from triplet_ref import oracles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_fresh(code: str, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter (this checkout first on the path, JAX in its
    default mode); fail with its stderr when it fails; return its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JAX_ENABLE_X64", None)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


# labels that differ only above bit 32: 32-bit truncation would merge the two classes
WIDE_LABELS = [7, 7, 7 + 2**32, 7 + 2**32, -(2**40), -(2**40)]
WIDE_X = np.array([[0.0, 0.0], [1.0, 0.5], [3.0, 0.0], [5.0, 1.0], [0.5, 2.0], [2.0, 2.5]])
LOSSES = [(tr.batch_all, oracles.batch_all), (tr.batch_hard, oracles.batch_hard),
          (tr.batch_semihard, oracles.batch_semihard), (tr.batch_contrastive, oracles.batch_contrastive)]


@pytest.mark.slow  # the fresh-process test below covers it in the default run
@pytest.mark.skipif(not B.is_installed("jax"), reason="jax not installed")
def test_jax_32bit_mode_keeps_labels_apart():
    """Item 1 (scoped 32-bit mode): int64, uint64 and Python-int labels beyond 32 bits keep
    their identity on JAX — every loss equals the oracle, and the masks are right."""
    import jax
    import jax.numpy as jnp

    want_pos = oracles.anchor_positive_mask(WIDE_LABELS)
    with jax.enable_x64(False):
        x = jnp.asarray(WIDE_X, dtype=jnp.float32)
        assert B.get_backend("jax").index_dtype(jnp) == jnp.int32  # really 32-bit mode
        for labels in (WIDE_LABELS, np.array(WIDE_LABELS, dtype=np.int64),
                       np.array(WIDE_LABELS, dtype=np.int64).astype(np.uint64)):
            for fn, oracle in LOSSES:
                got = float(fn(labels, x, 0.5))
                want = oracle(np.asarray(labels), WIDE_X, 0.5)
                np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=fn.__name__)
            got_pos = np.asarray(tr.anchor_positive_mask(labels, backend="jax"))
            np.testing.assert_array_equal(got_pos, want_pos)
        # the labels keep their identity against each other: 2**32 + 7 is not 7
        assert float(tr.batch_hard(WIDE_LABELS[:4], x[:4], 0.5)) == pytest.approx(
            oracles.batch_hard(WIDE_LABELS[:4], WIDE_X[:4], 0.5), rel=1e-6)
        assert oracles.batch_hard(WIDE_LABELS[:4], WIDE_X[:4], 0.5) > 0
        # int32 labels that fit are used as they are (no remapping needed)
        lab = jnp.asarray([3, 3, -5, -5, 9, 9], dtype=jnp.int32)
        np.testing.assert_allclose(float(tr.batch_all(lab, x)), oracles.batch_all(np.asarray(lab), WIDE_X),
                                   rtol=1e-5)


@pytest.mark.skipif(not B.is_installed("torch"), reason="torch not installed")
def test_uint64_labels_above_int64_on_torch():
    """Labels beyond int64 (uint64 ≥ 2**63) on a 64-bit backend keep their identity too."""
    import torch

    y = np.array([2**63 + 1, 2**63 + 1, 1, 1, 2**64 - 1, 2**64 - 1], dtype=np.uint64)
    got = float(tr.batch_hard(y, torch.tensor(WIDE_X), 0.5))
    assert got == pytest.approx(oracles.batch_hard(y, WIDE_X, 0.5), rel=1e-12)


def test_dense_ids_share_one_mapping():
    from triplet_ref.backends._base import dense_label_ids

    a = np.array([2**40, 5, 2**40], dtype=np.int64)
    b = np.array([5, 2**64 - 1], dtype=np.uint64)
    da, db = dense_label_ids([a, b])
    assert da.dtype == np.int32 and db.dtype == np.int32
    np.testing.assert_array_equal(da, [1, 0, 1])
    np.testing.assert_array_equal(db, [0, 2])


def test_fresh_process_threads_then_jax_default_mode():
    """One fresh process (a process costs seconds of imports on a small machine):

    * item 12: eight threads start at once, each making the process's first calls with
      its own ``backend=`` (the frameworks are imported concurrently): every call
      succeeds and equals the NumPy result;
    * items 1 and 2 in JAX's default 32-bit mode (never enabled x64): the issue's labels
      and Python-int / uint64 labels beyond 32 bits keep their identity (losses and
      masks), and batch_all's triplet counts at B = 2200 with two classes (2,659,580,000
      valid triplets, beyond int32) are float32 there (docs/semantics.md), never wrapped.
    """
    names = [n for n in ("numpy", "torch", "jax", "array_api_strict") if B.is_installed(n)]
    out = run_fresh(f"""
        import threading, traceback
        import numpy as np
        import triplet_ref as tr
        names = {names!r} * 2
        y = [0, 0, 1, 1, 2, 2]
        x = np.arange(12.0).reshape(6, 2) % 5
        fns = [tr.batch_all, tr.batch_hard, tr.batch_semihard, tr.batch_contrastive]
        want = [float(f(y, x)) for f in fns]  # NumPy only: imports no other framework
        errors, results = [], {{}}
        barrier = threading.Barrier(len(names))
        def run(i, name):
            barrier.wait()
            try:
                be = tr.backends.get_backend(name)
                results[i] = [float(np.asarray(be.to_numpy(f(y, x, backend=name)))) for f in fns]
            except Exception:
                errors.append(name + ": " + traceback.format_exc())
        threads = [threading.Thread(target=run, args=(i, n)) for i, n in enumerate(names)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert not errors, "\\n".join(errors)
        for i, got in results.items():
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=names[i])
        print("threads ok", len(results))
        if "jax" not in names:
            raise SystemExit(0)

        import jax, jax.numpy as jnp
        from triplet_ref import oracles
        assert not jax.config.jax_enable_x64
        labels = {WIDE_LABELS!r}
        xw = np.array({WIDE_X.tolist()!r})
        for lab in (labels, np.array(labels), np.array(labels).astype(np.uint64)):
            for f in fns:
                got = float(f(lab, jnp.asarray(xw, dtype=jnp.float32), 0.5))
                np.testing.assert_allclose(got, getattr(oracles, f.__name__)(np.asarray(lab), xw, 0.5),
                                           rtol=1e-5, err_msg=f.__name__)
            np.testing.assert_array_equal(np.asarray(tr.anchor_positive_mask(lab, backend="jax")),
                                          oracles.anchor_positive_mask(labels))
        # the issue's example: 7 and 7 + 2**32 are two classes
        y4, x4 = [7, 7, 7 + 2**32, 7 + 2**32], np.array([[0.0], [1.0], [3.0], [5.0]])
        print("issue", float(tr.batch_hard(y4, jnp.asarray(x4, dtype=jnp.float32))), float(tr.batch_hard(y4, x4)))
        # a reference set's labels share the batch labels' mapping (7 + 2**32 is one class in both)
        ry, rx = [7 + 2**32, 5, 7], np.array([[2.0], [4.0], [6.0]])
        got = float(tr.batch_hard(y4, jnp.asarray(x4, dtype=jnp.float32), ref_embeddings=rx.astype(np.float32), ref_labels=ry))
        want = float(tr.batch_hard(y4, x4, ref_embeddings=rx, ref_labels=ry))
        assert abs(got - want) <= 1e-6 * abs(want) and want > 0, (got, want)
        got = float(tr.batch_hard([1, 1, 2, 2], jnp.asarray(x4, dtype=jnp.float32), ref_embeddings=rx.astype(np.float32), ref_labels=[2**40, 1, 2]))
        want = float(tr.batch_hard([1, 1, 2, 2], x4, ref_embeddings=rx, ref_labels=[2**40, 1, 2]))
        assert abs(got - want) <= 1e-6 * abs(want) and want > 0, (got, want)
        B = 2200
        yb = np.repeat([0, 1], B // 2)
        emb = np.random.default_rng(0).normal(size=(B, 2)).astype(np.float32)
        loss, info = tr.batch_all(yb, jnp.asarray(emb), return_info=True)
        _, ref = tr.batch_all(yb, emb, return_info=True)  # NumPy: int64, exact
        print(info["num_valid"].dtype, float(info["num_valid"]), int(ref["num_valid"]),
              float(info["num_positive"]), int(ref["num_positive"]),
              float(info["fraction_positive"]), float(ref["fraction_positive"]))
    """)
    lines = out.strip().splitlines()
    assert lines[0] == f"threads ok {2 * len(names)}"
    if "jax" not in names:
        return
    _, jax_loss, np_loss = lines[-2].split()
    assert float(jax_loss) == pytest.approx(float(np_loss), rel=1e-6) and float(np_loss) > 0
    dt, nv, nv_ref, npos, npos_ref, frac, frac_ref = lines[-1].split()
    assert dt == "float32"
    assert int(nv_ref) == 2_659_580_000 == 2200 * 1099 * 1100
    assert float(nv) == pytest.approx(int(nv_ref), rel=2**-22)
    assert float(npos) == pytest.approx(int(npos_ref), rel=2**-22)
    assert float(frac) == pytest.approx(float(frac_ref), rel=1e-5) and float(frac_ref) > 0.1
