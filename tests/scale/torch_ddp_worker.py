"""One rank of the torch.distributed (gloo) global-batch test; run by tests/test_distributed.py.

``python torch_ddp_worker.py RANK WORLD INIT_FILE OUT_DIR SIZES``: every rank builds the same
global batch and model, takes its (uneven) slice of rows, wraps the model in DDP and, for
every loss, writes the loss values, this rank's ``"none"`` rows, the info scalars and the
parameter gradients after DDP's averaging to ``OUT_DIR/rank{RANK}.json``.  Rank 0 also
writes the single-process results on the concatenated batch to ``OUT_DIR/single.json``.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import triplet_ref as tr

LOSSES = {
    "batch_all": (tr.batch_all, {}),
    "batch_all_soft": (tr.batch_all, {"soft": True}),
    "batch_hard": (tr.batch_hard, {}),
    "batch_hard_soft": (tr.batch_hard, {"soft": True}),
    "batch_semihard": (tr.batch_semihard, {}),
    "batch_contrastive": (tr.batch_contrastive, {}),
}
INFO_SCALARS = ("num_valid", "num_positive", "fraction_positive", "fraction_semihard",
                "mean_hardest_positive_dist", "mean_hardest_negative_dist")


def data(n):
    rng = np.random.default_rng(5)
    x = torch.as_tensor(rng.normal(size=(n, 5)))
    y = torch.as_tensor(rng.permutation(np.repeat(np.arange(4), [4, 3, 3, n - 10])))
    return x, y


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 3).double()


def run(net, x, y, **kw):
    out = {}
    only = os.environ.get("SCALE_LOSSES")
    for name, (fn, extra) in LOSSES.items():
        if only and name not in only.split(","):
            continue
        net.zero_grad()
        emb = net(x)
        loss, info = fn(y, emb, 0.8, return_info=True, **extra, **kw)
        loss.backward()
        grads = [p.grad.detach().numpy().ravel().tolist() for p in net.parameters()]
        with torch.no_grad():
            emb = net(x)
            s = fn(y, emb, 0.8, reduction="sum", **extra, **kw)
            none = fn(y, emb, 0.8, reduction="none", **extra, **kw)
        out[name] = {
            "mean": float(loss), "sum": float(s), "none": none.numpy().tolist(),
            "info": {k: float(v) for k, v in info.items() if k in INFO_SCALARS},
            "grads": grads,
        }
    return out


def main():
    rank, world, init, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sizes = [int(s) for s in sys.argv[5].split(",")]
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    x, y = data(sum(sizes))
    start = sum(sizes[:rank])
    xl, yl = x[start:start + sizes[rank]], y[start:start + sizes[rank]]
    ddp = torch.nn.parallel.DistributedDataParallel(model())
    res = run(ddp, xl, yl, process_group=dist.group.WORLD)
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(res, f)
    if rank == 0:
        with open(f"{out_dir}/single.json", "w") as f:
            json.dump(run(model(), x, y), f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
