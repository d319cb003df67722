#!/usr/bin/env python3
"""Baseline: the optimal denoiser (ALGORITHMS.md section 3) the way the reference code
computes it: the whole float32 B x N distance matrix, a softmax over it, and the
product with the training set.

    D = |x|^2 + |y|^2 - 2 X @ Y.T;  W = softmax(-D / (2 sigma^2));  out = W @ Y

Reads y.npy (N x D), x.npy (S x B x D: the queries for each sigma) and sigmas.json
from --dir; times one call per sigma, --repeats times; writes the outputs for the
first --keep queries of each sigma to out.npy (S x keep x D) and prints JSON.
"""
import argparse
import json
import os
import time

import numpy as np


def denoise(X, Y, yy, sigma):
    xx = np.einsum("ij,ij->i", X, X)[:, None]
    D = xx + yy[None, :] - 2.0 * (X @ Y.T)
    L = D * np.float32(-1.0 / (2.0 * sigma * sigma))
    L -= L.max(axis=1, keepdims=True)
    W = np.exp(L)
    W /= W.sum(axis=1, keepdims=True)
    return W @ Y


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", type=int, default=8)
    a = p.parse_args()
    Y = np.load(os.path.join(a.dir, "y.npy")).astype(np.float32)
    X = np.load(os.path.join(a.dir, "x.npy")).astype(np.float32)
    sigmas = json.load(open(os.path.join(a.dir, "sigmas.json")))
    yy = np.einsum("ij,ij->i", Y, Y)
    times = []
    kept = None
    for r in range(a.repeats + 1):
        t0 = time.perf_counter()
        outs = [denoise(X[s], Y, yy, sigma) for s, sigma in enumerate(sigmas)]
        dt = time.perf_counter() - t0
        if r > 0:
            times.append(dt)
        kept = np.stack([o[: a.keep] for o in outs])
    np.save(os.path.join(a.dir, "out.npy"), kept.astype(np.float32))
    print(json.dumps({"seconds": times, "seconds_median": float(np.median(times))}))


if __name__ == "__main__":
    main()
