"""Global-batch mining: ``process_group=`` on torch.distributed (gloo processes) and
``axis_name=`` under JAX ``shard_map`` (4 host devices), against one process on the
concatenated batch (docs/semantics.md, "Global-batch mining").

Each test starts subprocesses (a fresh interpreter per rank / for the XLA device count):
the default run has one torch run (3 ranks: uneven batches, then one rank without rows;
each loss unchunked and chunked) and one JAX run; the 2-rank torch run is behind
``--runslow``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import triplet_ref as tr

HERE = Path(__file__).parent
ROOT = HERE.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run_torch(tmp_path, splits, timeout=240):
    """``splits``: per-rank row counts of one or more global batches (each a list of
    ``world`` counts), all run in one set of ``world`` gloo processes."""
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    world = len(splits[0])
    init = tmp_path / "init"
    arg = ";".join(",".join(map(str, sizes)) for sizes in splits)
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "scale" / "torch_ddp_worker.py"), str(r), str(world),
                          str(init), str(tmp_path), arg],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(world)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        # a rank that hangs (a collective that one rank never enters) fails the test
        for p in procs:
            p.kill()
        pytest.fail(f"the {world} ranks did not finish within {timeout} s (a hang?): {arg}")
    for r, (p, o) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{o[-4000:]}"
    for k, sizes in enumerate(splits):
        single = json.loads((tmp_path / f"single_{k}.json").read_text())
        ranks = [json.loads((tmp_path / f"rank{r}_{k}.json").read_text()) for r in range(world)]
        assert set(ranks[0]) == ({"unchunked", "chunked", "module"} if k == 0 else {"unchunked", "chunked"})
        for variant in ranks[0]:
            _compare(single, [res[variant] for res in ranks], sizes, f"{sizes} {variant}")


def _compare(single, ranks, sizes, label):
    """Every rank's results (one dict per rank) against the single process's."""
    for name, want in single.items():
        start = 0
        for r, res in enumerate(ranks):
            got = res[name]
            what = f"{label} {name} rank {r}"
            np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-10, atol=1e-12, err_msg=what)
            np.testing.assert_allclose(got["sum"], want["sum"], rtol=1e-10, atol=1e-12, err_msg=what)
            assert got["info"].keys() == want["info"].keys()
            for k in want["info"]:
                np.testing.assert_allclose(got["info"][k], want["info"][k], rtol=1e-10, atol=1e-12,
                                           err_msg=f"{what} info {k}")
            # "none": this rank's anchors against the global batch = its rows of the single one
            n = sizes[r]
            none = np.asarray(got["none"]).reshape((n,) + np.shape(want["none"])[1:])
            np.testing.assert_allclose(none, np.asarray(want["none"])[start:start + n],
                                       rtol=1e-10, atol=1e-12, err_msg=f"{what} none")
            start += n
            # parameter gradients after DDP's averaging = the single-process gradients
            for g, w in zip(got["grads"], want["grads"]):
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=f"{what} grads")
        assert any(abs(v) > 0 for g in want["grads"] for v in g), f"{name}: no gradient at all"


def test_torch_ddp_three_ranks_uneven_and_empty(tmp_path):
    """3 ranks, two global batches: uneven rows, then a rank with no row (it must neither
    hang the others nor change the value); each unchunked and with chunk_size, the first
    also through the torch modules (process_group and chunk_size at construction)."""
    _run_torch(tmp_path, [[5, 2, 7], [6, 0, 8]])


@pytest.mark.slow
def test_torch_ddp_two_ranks(tmp_path):
    _run_torch(tmp_path, [[6, 8], [0, 14]])


@pytest.mark.slow
def test_torch_ddp_rank_without_positive_pairs(tmp_path):
    _run_torch(tmp_path, [[1, 12, 1]])


def test_jax_shard_map_four_devices():
    pytest.importorskip("jax")
    proc = subprocess.run([sys.executable, str(HERE / "scale" / "jax_shard_worker.py")], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    assert proc.stdout.strip().splitlines()[-1] == "OK 6"


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_empty_global_batch_is_a_value_error(chunk_size):
    """Every rank without a row: the same ValueError on every rank (decided after the
    gather, so none is left waiting), as for an empty single-process batch."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    try:
        from jax import shard_map
    except ImportError:  # older JAX
        from jax.experimental.shard_map import shard_map

    mesh = Mesh(np.array(jax.devices()[:1]), ("i",))
    f = shard_map(lambda x, y: tr.batch_hard(y, x, axis_name="i", chunk_size=chunk_size), mesh=mesh,
                  in_specs=(P("i"), P("i")), out_specs=P())
    with pytest.raises(ValueError, match="embeddings: empty global batch"):
        f(jnp.zeros((0, 3)), jnp.zeros((0,), dtype=jnp.int32))
