#!/usr/bin/env python3
"""Baseline: the randomized three-layer construction (ALGORITHMS.md section 1) in
plain numpy with float matrices, the way the paper's own code works.

Layer 1: Phi = (X @ W.T + b > 0) as a float matrix (N x n).
Layer 2: walk a random permutation of X-; for each candidate still uncovered,
u = 1 - Phi[i], s = Phi @ u for every sample, m = min of s over X+; if m > 0 add
the neuron and mark the X- samples with s < m covered.
Layer 3: OR.

Reads a rote dataset directory (x.npy, y.npy). Prints JSON with the median fit
time over --repeats runs (more while they took less than --min-seconds in all), whether the last fit interpolated, and its k.
"""
import argparse
import json
import time

import numpy as np


def fit(X, y, width, max_bias, seed, classes, dtype):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((width, X.shape[1])).astype(dtype)
    b = rng.uniform(-max_bias, max_bias, width).astype(dtype)
    Phi = (X @ W.T + b > 0).astype(dtype)
    ks = {}
    covered_all = True
    for c in classes:
        neg = np.flatnonzero(y == c)
        pos = np.flatnonzero(y != c)
        covered = np.zeros(len(y), dtype=bool)
        neurons = []
        for i in rng.permutation(neg):
            if covered[i]:
                continue
            u = 1.0 - Phi[i]
            s = Phi @ u
            m = s[pos].min()
            if m > 0:
                neurons.append((u, m))
                covered[neg[s[neg] < m]] = True
                if covered[neg].all():
                    break
        ks[int(c)] = max(len(neurons), 1)
        covered_all &= bool(covered[neg].all())
    return covered_all, ks


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="rote dataset directory")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--max-bias", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one-vs-rest", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=0.0,
                    help="keep repeating (next seeds) until the fits took this long in all")
    ap.add_argument("--float32", action="store_true", help="float32 matrices (needed for N = 10^6)")
    a = ap.parse_args()
    X = np.load(f"{a.data}/x.npy").astype(np.float64)
    X = X.reshape(X.shape[0], -1)
    y = np.load(f"{a.data}/y.npy")
    X /= np.sqrt((X ** 2).sum(axis=1)).max()
    dtype = np.float32 if a.float32 else np.float64
    X = X.astype(dtype)
    labels = np.unique(y)
    classes = labels if a.one_vs_rest else labels[-1:]
    times = []
    r = 0
    while r < a.repeats or sum(times) < a.min_seconds:
        t0 = time.perf_counter()
        interpolated, ks = fit(X, y, a.width, a.max_bias, a.seed + r, classes, dtype)
        times.append(time.perf_counter() - t0)
        r += 1
    print(json.dumps({
        "fit_seconds_median": float(np.median(times)),
        "fit_seconds": times,
        "interpolated": interpolated,
        "second_width": int(sum(ks.values())),
        "numpy": np.__version__,
    }))


if __name__ == "__main__":
    main()
