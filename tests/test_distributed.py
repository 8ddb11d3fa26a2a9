"""Global-batch mining: ``process_group=`` on torch.distributed (gloo processes) and
``axis_name=`` under JAX ``shard_map`` (4 host devices), against one process on the
concatenated batch (docs/semantics.md, "Global-batch mining").

Each test starts subprocesses (a fresh interpreter per rank / for the XLA device count):
the default run has one torch run (3 ranks, uneven batches) and one JAX run; the
2-rank torch run is behind ``--runslow``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run_torch(tmp_path, sizes):
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    world = len(sizes)
    init = tmp_path / "init"
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "scale" / "torch_ddp_worker.py"), str(r), str(world),
                          str(init), str(tmp_path), ",".join(map(str, sizes))],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(world)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for r, (p, o) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{o[-4000:]}"
    single = json.loads((tmp_path / "single.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for name, want in single.items():
        start = 0
        for r, res in enumerate(ranks):
            got = res[name]
            what = f"{name} rank {r}"
            np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-10, atol=1e-12, err_msg=what)
            np.testing.assert_allclose(got["sum"], want["sum"], rtol=1e-10, atol=1e-12, err_msg=what)
            assert got["info"].keys() == want["info"].keys()
            for k in want["info"]:
                np.testing.assert_allclose(got["info"][k], want["info"][k], rtol=1e-10, atol=1e-12,
                                           err_msg=f"{what} info {k}")
            # "none": this rank's anchors against the global batch = its rows of the single one
            n = sizes[r]
            np.testing.assert_allclose(np.asarray(got["none"]), np.asarray(want["none"])[start:start + n],
                                       rtol=1e-10, atol=1e-12, err_msg=f"{what} none")
            start += n
            # parameter gradients after DDP's averaging = the single-process gradients
            for g, w in zip(got["grads"], want["grads"]):
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=f"{what} grads")
        assert any(abs(v) > 0 for g in want["grads"] for v in g), f"{name}: no gradient at all"


def test_torch_ddp_three_ranks_uneven(tmp_path):
    _run_torch(tmp_path, [5, 2, 7])


@pytest.mark.slow
def test_torch_ddp_two_ranks(tmp_path):
    _run_torch(tmp_path, [6, 8])


@pytest.mark.slow
def test_torch_ddp_rank_without_positive_pairs(tmp_path):
    _run_torch(tmp_path, [1, 12, 1])


def test_jax_shard_map_four_devices():
    pytest.importorskip("jax")
    proc = subprocess.run([sys.executable, str(HERE / "scale" / "jax_shard_worker.py")], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    assert proc.stdout.strip().splitlines()[-1] == "OK 6"
