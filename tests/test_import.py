"""``import triplet_ref`` and NumPy-only use import no other framework (checked in a fresh
interpreter, because this test process has them all loaded)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "jax", "jaxlib", "cupy", "array_api_strict", "tensorflow", "keras")


def _loaded_after(code: str) -> list[str]:
    script = textwrap.dedent(f"""
        import json, sys
        {code}
        heavy = {HEAVY!r}
        print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set(heavy))))
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_alone_imports_no_framework():
    assert _loaded_after("import triplet_ref") == []


def test_numpy_use_imports_no_framework():
    code = textwrap.dedent("""
        import numpy as np
        import triplet_ref as tr
        y = np.array([0, 1, 0, 1, 2])
        x = np.random.default_rng(0).standard_normal((5, 3))
        assert isinstance(tr.pairwise_distances(x), np.ndarray)
        tr.anchor_positive_mask(y); tr.anchor_negative_mask(y); tr.triplet_mask(y)
        for f in (tr.batch_all, tr.batch_hard, tr.batch_semihard, tr.batch_contrastive):
            out = f(y, x, reduction="mean")
            assert isinstance(out, (np.ndarray, np.generic)), type(out)
        tr.batch_all(y, x, soft=True); tr.batch_hard(y, x, soft=True, return_info=True)
        tr.batch_semihard(y, x, return_info=True)
        tr.triplet_loss(x, x[::-1].copy(), x, metric="cosine")
        tr.contrastive_loss(x, x[::-1].copy(), [1, 0, 1, 0, 1])
        tr.pairwise_distances(x.tolist(), backend="numpy")
        tr.oracles.batch_hard(y, x)
        tr.backends.available_backends()
    """)
    code = code.replace("\n", "\n        ")
    assert _loaded_after(code) == []


def test_naming_a_backend_imports_only_that_one():
    code = textwrap.dedent("""
        import importlib.util, numpy as np
        import triplet_ref as tr
        if importlib.util.find_spec('array_api_strict') is not None:
            tr.pairwise_distances(np.eye(3), backend='array_api_strict')
    """).replace("\n", "\n        ")
    import importlib.util

    expect = ["array_api_strict"] if importlib.util.find_spec("array_api_strict") else []
    assert _loaded_after(code) == expect


def test_torch_wrappers_import_torch_only():
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return
    assert _loaded_after("import triplet_ref.torch") == ["torch"]


def test_testing_kit_imports_no_framework_nor_test_tools():
    """``import triplet_ref.testing`` and a NumPy ``check_loss`` import no framework,
    hypothesis or pytest (the kit imports them only where a check needs them)."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import triplet_ref, triplet_ref.testing
        from triplet_ref.testing import check_loss, regimes
        rep = check_loss(lambda y, x: triplet_ref.batch_hard(y, x), "batch_hard", backend="numpy")
        assert rep.ok, str(rep)
        assert not {"hypothesis", "pytest", "_pytest"} & {m.split(".")[0] for m in sys.modules}
    """).replace("\n", "\n        ")
    assert _loaded_after(code) == []


def test_import_and_mining_steps_import_no_numba():
    # numba (optional, `triplet_ref[numba]`) is imported by the first kernel call that
    # selects it, never by importing the package or its mining engine
    script = textwrap.dedent("""
        import json, sys
        import triplet_ref, triplet_ref.mining as m
        m.STEPS, m.BATCH_ALL_HINGE.kernel.forward, m.Body.AUTO
        print(json.dumps(sorted({k.split('.')[0] for k in sys.modules} & {"numba", "llvmlite"})))
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
