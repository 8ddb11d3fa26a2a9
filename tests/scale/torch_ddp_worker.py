"""One rank of the torch.distributed (gloo) global-batch test; run by tests/test_distributed.py.

``python torch_ddp_worker.py RANK WORLD INIT_FILE OUT_DIR SPLITS``: ``SPLITS`` is one or more
per-rank row counts, ``;``-separated (``5,2,7;6,0,8``: two global batches, split unevenly,
the second with a rank that holds no row), all run in this one process group.  For each
split every rank builds the same global batch and model, takes its slice of rows, wraps the
model in DDP and, for every loss, unchunked and with ``chunk_size=2`` (and, in the first
split, through the torch module built with ``process_group`` and ``chunk_size``), writes the loss
values, this rank's ``"none"`` rows, the info scalars and the parameter gradients after
DDP's averaging to ``OUT_DIR/rank{RANK}_{SPLIT}.json``.  Rank 0 also writes the
single-process (unchunked) results on the concatenated batch to ``OUT_DIR/single_{SPLIT}.json``.

The variant ``budget`` passes the default ``chunk_size=None`` with a memory budget
(``TRIPLET_REF_MEMORY_BUDGET``) that gives ``BUDGET_ROWS`` rows per block for the 14-row
global batch: every rank must chunk (even one whose rows fit).  Which ``chunk_size``
each variant's calls ran :func:`triplet_ref.losses._pairs.chunked` with is written to
``OUT_DIR/chunks{RANK}_{SPLIT}.json``.
"""
from __future__ import annotations

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

import triplet_ref as tr
from _cases import LOSSES, MARGIN, batch, call, info_scalars, selected
from triplet_ref.losses import _pairs
from triplet_ref.torch import BatchAllLoss, BatchContrastiveLoss, BatchHardLoss, BatchSemiHardLoss

MODULE_OF = {tr.batch_all: BatchAllLoss, tr.batch_hard: BatchHardLoss, tr.batch_semihard: BatchSemiHardLoss,
             tr.batch_contrastive: BatchContrastiveLoss}

CHUNK = 2
#: rows per block that the budget gives for 14 float64 rows: budget // (8 arrays · 14 · 8 bytes)
BUDGET_ROWS = 3
BUDGET = BUDGET_ROWS * 8 * 14 * 8

#: variant -> the chunk_size of every chunked() call it made (the spy below)
SEEN = {}
_VARIANT = [None]
_chunked = _pairs.chunked


def _spy(fn, *args, chunk_size, **kwargs):
    SEEN.setdefault(_VARIANT[0], []).append(chunk_size)
    return _chunked(fn, *args, chunk_size=chunk_size, **kwargs)


_pairs.chunked = _spy
#: collectives give up after this long: a rank that stops taking part fails the others
#: instead of hanging them
TIMEOUT = datetime.timedelta(seconds=90)


def data(n):
    x, y = batch([4, 3, 3, n - 10], 5, seed=5)
    return torch.as_tensor(x), torch.as_tensor(y)


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 3).double()


def run(net, x, y, loss=call):
    """Per loss: the values, ``"none"`` rows, info scalars and parameter gradients, with
    ``loss(name, labels, embeddings, **kw)`` (default: the function)."""
    out = {}
    for name in selected(os.environ.get("SCALE_LOSSES")):
        net.zero_grad()
        value, info = loss(name, y, net(x), return_info=True)
        value.backward()
        grads = [p.grad.detach().numpy().ravel().tolist() for p in net.parameters()]
        with torch.no_grad():
            emb = net(x)
            s = loss(name, y, emb, reduction="sum")
            none = loss(name, y, emb, reduction="none")
        out[name] = {
            "mean": float(value), "sum": float(s), "none": none.numpy().tolist(),
            "info": {k: float(v) for k, v in info_scalars(info).items()},
            "grads": grads,
        }
    return out


def variants(group, module=False):
    """How each rank calls the losses: ``process_group`` unchunked and chunked (and, with
    ``module``, the torch module built with both keywords)."""
    out = {
        "unchunked": lambda name, y, e, **kw: call(name, y, e, process_group=group, **kw),
        "chunked": lambda name, y, e, **kw: call(name, y, e, process_group=group, chunk_size=CHUNK, **kw),
    }
    def by_budget(name, y, e, **kw):
        os.environ["TRIPLET_REF_MEMORY_BUDGET"] = str(BUDGET)
        try:
            return call(name, y, e, process_group=group, **kw)
        finally:
            del os.environ["TRIPLET_REF_MEMORY_BUDGET"]

    out["budget"] = by_budget
    if module:
        def by_module(name, y, e, **kw):
            fn, extra = LOSSES[name]
            return MODULE_OF[fn](MARGIN, **extra, **kw, process_group=group, chunk_size=CHUNK)(e, y)

        out["module"] = by_module
    return out


def main():
    rank, world, init, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    splits = [[int(s) for s in split.split(",")] for split in sys.argv[5].split(";")]
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=TIMEOUT)
    group = dist.group.WORLD
    for k, sizes in enumerate(splits):
        assert len(sizes) == world, (sizes, world)
        x, y = data(sum(sizes))
        start = sum(sizes[:rank])
        xl, yl = x[start:start + sizes[rank]], y[start:start + sizes[rank]]
        ddp = torch.nn.parallel.DistributedDataParallel(model())
        res = {}
        SEEN.clear()
        for v, f in variants(group, module=k == 0).items():
            _VARIANT[0] = v
            res[v] = run(ddp, xl, yl, f)
        _VARIANT[0] = None
        with open(f"{out_dir}/rank{rank}_{k}.json", "w") as f:
            json.dump(res, f)
        with open(f"{out_dir}/chunks{rank}_{k}.json", "w") as f:
            json.dump(SEEN, f)
        if rank == 0:
            with open(f"{out_dir}/single_{k}.json", "w") as f:
                json.dump(run(model(), x, y), f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
