#!/usr/bin/env python3
"""Baseline: exact k nearest neighbours with faiss-cpu's flat L2 index (IndexFlatL2:
exhaustive float32 search, BLAS for batches of queries).

Reads y.npy (N x D) and x.npy (Q x D) from --dir; times add + search, --repeats times;
writes the last search's indices to idx.npy and prints JSON.
"""
import argparse
import json
import os
import time

import faiss
import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    Y = np.ascontiguousarray(np.load(os.path.join(a.dir, "y.npy")).astype(np.float32))
    X = np.ascontiguousarray(np.load(os.path.join(a.dir, "x.npy")).astype(np.float32))
    times = []
    idx = None
    for r in range(a.repeats + 1):
        t0 = time.perf_counter()
        index = faiss.IndexFlatL2(Y.shape[1])
        index.add(Y)
        _, idx = index.search(X, a.k)
        dt = time.perf_counter() - t0
        if r > 0:
            times.append(dt)
    np.save(os.path.join(a.dir, "idx.npy"), idx.astype(np.int64))
    print(json.dumps({"seconds": times, "seconds_median": float(np.median(times)), "threads": faiss.omp_get_max_threads()}))


if __name__ == "__main__":
    main()
