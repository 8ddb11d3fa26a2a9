"""One rank of the "bad input on one rank" test (torch.distributed, gloo); run by
tests/test_distributed.py.

``python torch_rank_errors_worker.py RANK WORLD INIT_FILE OUT_DIR``: in one process group,
every case of :data:`CASES` is called on every rank, one rank (or all) passing a bad
argument; each rank records what the call raised (type and message) or returned, and
writes ``OUT_DIR/errors{RANK}.json``.  The collectives time out after :data:`TIMEOUT`: a
rank left waiting fails the run (the test also kills ranks that do not finish).  The
last case is a valid call after all the errors: the group must still work, and its value
must be the one-process loss (rank 0 writes that too).
"""
from __future__ import annotations

import datetime
import json
import sys

import torch
import torch.distributed as dist

import triplet_ref as tr

TIMEOUT = datetime.timedelta(seconds=30)
BAD = 1  # the rank that passes the bad argument


def data(rank):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(11, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3])
    rows = slice(0, 5) if rank == 0 else slice(5, 11)
    return x, y, x[rows], y[rows]


def cases(rank):
    """name -> a function calling the loss on this rank (the bad argument on rank BAD)."""
    _, _, x, y = data(rank)
    bad = rank == BAD
    group = dist.group.WORLD

    def loss(labels, emb, fn=tr.batch_hard, **kw):
        kw.setdefault("process_group", group)
        return fn(labels, emb, 0.5, **kw)

    out = {}
    for chunk in (None, 2):
        c = {"chunk_size": chunk}
        out[f"labels_length/{chunk}"] = lambda c=c: loss(y[:-1] if bad else y, x, **c)
        out[f"labels_float/{chunk}"] = lambda c=c: loss(y.double() if bad else y, x, fn=tr.batch_all, **c)
        out[f"embeddings_1d/{chunk}"] = lambda c=c: loss(y, x[:, 0] if bad else x, **c)
        out[f"columns/{chunk}"] = lambda c=c: loss(y, x[:, :3] if bad else x, fn=tr.batch_semihard, **c)
        out[f"dtype/{chunk}"] = lambda c=c: loss(y, x.float() if bad else x, **c)
    out["margin"] = lambda: tr.batch_contrastive(y, x, -1.0 if bad else 0.5, process_group=group)
    out["chunk_size_value"] = lambda: loss(y, x, chunk_size=-1 if bad else None)
    out["chunk_size_paths"] = lambda: loss(y, x, chunk_size=2 if bad else 0)
    out["every_rank_bad"] = lambda: loss(y[:-1], x)
    out["ok"] = lambda: loss(y, x)
    return out


def main():
    rank, world, init, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=TIMEOUT)
    res = {}
    for name, f in cases(rank).items():
        try:
            res[name] = {"value": float(f())}
        except (TypeError, ValueError) as exc:
            res[name] = {"type": type(exc).__name__, "message": str(exc)}
    if rank == 0:
        X, Y, _, _ = data(0)
        res["single"] = {"value": float(tr.batch_hard(Y, X, 0.5))}
    with open(f"{out_dir}/errors{rank}.json", "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
