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


def _spawn_gloo(tmp_path, worker, world, args, timeout=240):
    """``world`` gloo processes running ``tests/scale/<worker> RANK WORLD INIT_FILE OUT_DIR
    *args`` (one process group; the worker runs all its cases in it); fails the test when
    a rank fails or they do not all finish within ``timeout`` s (a hang)."""
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    init = tmp_path / "init"
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "scale" / worker), str(r), str(world),
                          str(init), str(tmp_path), *args],
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
        pytest.fail(f"the {world} ranks did not finish within {timeout} s (a hang?): {worker} {args}")
    for r, (p, o) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{o[-4000:]}"


def _run_torch(tmp_path, splits, timeout=240):
    """``splits``: per-rank row counts of one or more global batches (each a list of
    ``world`` counts), all run in one set of ``world`` gloo processes."""
    world = len(splits[0])
    arg = ";".join(",".join(map(str, sizes)) for sizes in splits)
    _spawn_gloo(tmp_path, "torch_ddp_worker.py", world, [arg], timeout)
    for k, sizes in enumerate(splits):
        single = json.loads((tmp_path / f"single_{k}.json").read_text())
        ranks = [json.loads((tmp_path / f"rank{r}_{k}.json").read_text()) for r in range(world)]
        want = {"unchunked", "chunked", "budget"} | ({"module"} if k == 0 else set())
        assert set(ranks[0]) == want
        for variant in ranks[0]:
            _compare(single, [res[variant] for res in ranks], sizes, f"{sizes} {variant}")
        # chunk_size=None: the default budget (1 GiB) leaves 14 rows unchunked on every rank;
        # the tiny one (3 rows per block against 14 global rows) chunks every rank, also
        # those whose rows fit in one block and the one without rows
        for r in range(world):
            seen = json.loads((tmp_path / f"chunks{r}_{k}.json").read_text())
            assert "unchunked" not in seen, (r, seen)
            assert seen.get("chunked") and set(seen["chunked"]) == {2}, (r, seen)
            assert seen.get("budget") and set(seen["budget"]) == {3}, (r, seen)


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


#: case -> (the error type every rank raises, words its message must hold)
RANK_ERRORS = {
    **{f"labels_length/{c}": ("ValueError", ["labels", "length 5", "rank 1"]) for c in (None, 2)},
    **{f"labels_float/{c}": ("TypeError", ["labels", "integer", "rank 1"]) for c in (None, 2)},
    **{f"embeddings_1d/{c}": ("ValueError", ["embeddings", "rank 1"]) for c in (None, 2)},
    **{f"columns/{c}": ("ValueError", ["embeddings", "4 columns on rank 0", "3 columns on rank 1"])
       for c in (None, 2)},
    **{f"dtype/{c}": ("ValueError", ["embeddings", "float64 on rank 0", "float32 on rank 1"])
       for c in (None, 2)},
    "margin": ("ValueError", ["margin", "rank 1"]),
    "chunk_size_value": ("ValueError", ["chunk_size", "rank 1"]),
    "chunk_size_paths": ("ValueError", ["chunk_size", "0 on rank 0", "an int on rank 1"]),
    "every_rank_bad": ("ValueError", ["labels", "rank 0", "ranks [0, 1]"]),
}


def test_torch_bad_input_on_one_rank_raises_on_every_rank(tmp_path):
    """A bad argument on one rank of two (a labels length that is not its rows, float
    labels, 1-D embeddings, other columns or dtype than rank 0, a negative margin, a bad
    or disagreeing chunk_size), unchunked and chunked: every rank raises the same error,
    naming the argument and the rank, instead of the others waiting for the collective
    timeout; then a valid call in the same group gives the one-process value."""
    _spawn_gloo(tmp_path, "torch_rank_errors_worker.py", 2, [], timeout=180)
    ranks = [json.loads((tmp_path / f"errors{r}.json").read_text()) for r in range(2)]
    for case, (kind, words) in RANK_ERRORS.items():
        got = [res[case] for res in ranks]
        assert got[0] == got[1], (case, got)  # the same error on both ranks
        assert got[0].get("type") == kind, (case, got[0])
        for w in words:
            assert w in got[0]["message"], (case, w, got[0]["message"])
    for r, res in enumerate(ranks):
        np.testing.assert_allclose(res["ok"]["value"], ranks[0]["single"]["value"], rtol=1e-12, err_msg=f"rank {r}")


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
