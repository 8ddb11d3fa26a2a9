"""One rank of the torch.distributed (gloo) global-batch test; run by tests/test_distributed.py.

``python torch_ddp_worker.py RANK WORLD INIT_FILE OUT_DIR SPLITS``: ``SPLITS`` is one or more
per-rank row counts, ``;``-separated (``5,2,7;6,0,8``: two global batches, split unevenly,
the second with a rank that holds no row), all run in this one process group.  For each
split every rank builds the same global batch and model, takes its slice of rows, wraps the
model in DDP and, for every loss, unchunked and with ``chunk_size=2``, writes the loss
values, this rank's ``"none"`` rows, the info scalars and the parameter gradients after
DDP's averaging to ``OUT_DIR/rank{RANK}_{SPLIT}.json``.  Rank 0 also writes the
single-process (unchunked) results on the concatenated batch to ``OUT_DIR/single_{SPLIT}.json``.
"""
from __future__ import annotations

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

from _cases import batch, call, info_scalars, selected

CHUNK = 2
#: collectives give up after this long: a rank that stops taking part fails the others
#: instead of hanging them
TIMEOUT = datetime.timedelta(seconds=90)


def data(n):
    x, y = batch([4, 3, 3, n - 10], 5, seed=5)
    return torch.as_tensor(x), torch.as_tensor(y)


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 3).double()


def run(net, x, y, **kw):
    out = {}
    for name in selected(os.environ.get("SCALE_LOSSES")):
        net.zero_grad()
        loss, info = call(name, y, net(x), return_info=True, **kw)
        loss.backward()
        grads = [p.grad.detach().numpy().ravel().tolist() for p in net.parameters()]
        with torch.no_grad():
            emb = net(x)
            s = call(name, y, emb, reduction="sum", **kw)
            none = call(name, y, emb, reduction="none", **kw)
        out[name] = {
            "mean": float(loss), "sum": float(s), "none": none.numpy().tolist(),
            "info": {k: float(v) for k, v in info_scalars(info).items()},
            "grads": grads,
        }
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
        res = {"unchunked": run(ddp, xl, yl, process_group=group),
               "chunked": run(ddp, xl, yl, process_group=group, chunk_size=CHUNK)}
        with open(f"{out_dir}/rank{rank}_{k}.json", "w") as f:
            json.dump(res, f)
        if rank == 0:
            with open(f"{out_dir}/single_{k}.json", "w") as f:
                json.dump(run(model(), x, y), f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
