"""PyTorch baselines of `rote bench pool`: K MLPs, each trained with SGD on its subset of
the training examples (the keep matrix rote wrote), then queried on every training and
test example — the work `rote pool train` does, done two ways:

  loop  one model after another, as the anchors' code does (tf-privacy's and the
        heldout-influence training scripts train one model per run), with the data
        already in memory as tensors (no DataLoader: the fastest form of the loop);
  vmap  every model at once: torch.func.stack_module_state + functional_call + vmap,
        each model on its own batch of its subset per step (the best a PyTorch user can
        do without writing kernels).

Same recipe as rote's: per epoch a random order of the model's subset, batches of
--batch, mean cross-entropy, SGD with momentum and weight decay as torch.optim.SGD (a
constant learning rate), PyTorch's default Linear initialization. Prints JSON with the
seconds of each mode.

Usage: python3 pool_torch.py --dir DIR (x.npy float32 (n, d) already scaled, y.npy int64,
keep.npy uint8 (K, n), test_x.npy, meta.json {sizes, epochs, batch, lr, momentum,
weight_decay, modes})
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from torch import nn


def mlp(sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def run_loop(x, y, keep, test_x, meta):
    g = torch.Generator().manual_seed(0)
    outs = []
    for k in range(keep.shape[0]):
        subset = torch.from_numpy(np.nonzero(keep[k])[0])
        net = mlp(meta["sizes"])
        opt = torch.optim.SGD(net.parameters(), lr=meta["lr"], momentum=meta["momentum"], weight_decay=meta["weight_decay"])
        for _ in range(meta["epochs"]):
            order = subset[torch.randperm(len(subset), generator=g)]
            for s in range(0, len(order), meta["batch"]):
                idx = order[s : s + meta["batch"]]
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                loss.backward()
                opt.step()
        with torch.no_grad():
            outs.append((net(x), net(test_x)))
    return outs


def run_vmap(x, y, keep, test_x, meta):
    from torch.func import functional_call, grad, stack_module_state, vmap

    kk = keep.shape[0]
    models = [mlp(meta["sizes"]) for _ in range(kk)]
    params, _ = stack_module_state(models)
    base = mlp(meta["sizes"]).to("meta")
    velocity = {n: torch.zeros_like(p) for n, p in params.items()}

    def loss_of(p, xb, yb):
        return nn.functional.cross_entropy(functional_call(base, (p,), (xb,)), yb)

    step_grad = vmap(grad(loss_of))
    g = torch.Generator().manual_seed(0)
    subsets = [torch.from_numpy(np.nonzero(keep[k])[0]) for k in range(kk)]
    steps = max(-(-len(s) // meta["batch"]) for s in subsets)
    lr, mu, wd = meta["lr"], meta["momentum"], meta["weight_decay"]
    for _ in range(meta["epochs"]):
        orders = [s[torch.randperm(len(s), generator=g)] for s in subsets]
        for s in range(steps):
            # Every model takes a full batch each step (its order wraps around), so the
            # batched products keep one shape.
            idx = torch.stack([o.roll(-s * meta["batch"])[: meta["batch"]] for o in orders])
            grads = step_grad(params, x[idx], y[idx])
            with torch.no_grad():
                for n in params:
                    d = grads[n] + wd * params[n]
                    velocity[n].mul_(mu).add_(d)
                    params[n].sub_(lr * velocity[n])
    with torch.no_grad():
        forward = vmap(lambda p, xb: functional_call(base, (p,), (xb,)), in_dims=(0, None))
        return forward(params, x), forward(params, test_x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.dir, "meta.json")))
    x = torch.from_numpy(np.load(os.path.join(a.dir, "x.npy")))
    y = torch.from_numpy(np.load(os.path.join(a.dir, "y.npy")))
    test_x = torch.from_numpy(np.load(os.path.join(a.dir, "test_x.npy")))
    keep = np.load(os.path.join(a.dir, "keep.npy"))
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for mode in meta["modes"]:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        (run_loop if mode == "loop" else run_vmap)(x, y, keep, test_x, meta)
        out[mode + "_seconds"] = time.perf_counter() - t0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
