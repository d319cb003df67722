"""Baselines of `rote bench lssvm`: the same LSSVM in numpy/scipy — the RBF kernel matrix
(exp(−‖x − z‖²/σ²)) from one product, K + I/γ factorized once by
scipy.linalg.cho_factor and solved for 1 and every class's ±1 labels (the same
one-vs-rest system rote solves), then the decision on the test rows — and
scikit-learn's SVC (RBF with gamma = 1/σ², C = γ, one-vs-rest decision) on the same data.

Usage: python3 lssvm_scipy.py --dir DIR (x.npy float64 (n, d), y.npy int64, test_x.npy,
test_y.npy, meta.json {sigma, gamma, modes}); prints JSON with seconds and accuracies.
"""

import argparse
import json
import os
import time

import numpy as np
import scipy.linalg


def rbf(a, b, sigma):
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-np.maximum(d, 0.0) / (sigma * sigma))


def lssvm(x, y, tx, sigma, gamma):
    classes = np.unique(y)
    m = rbf(x, x, sigma)
    m[np.diag_indices_from(m)] += 1.0 / gamma
    labels = [classes[1]] if len(classes) == 2 else list(classes)
    rhs = np.column_stack([np.ones(len(y))] + [np.where(y == c, 1.0, -1.0) for c in labels])
    sol = scipy.linalg.cho_solve(scipy.linalg.cho_factor(m, lower=True), rhs)
    u, v = sol[:, 0], sol[:, 1:]
    b = v.sum(0) / u.sum()
    coef = v - u[:, None] * b[None, :]
    dec = rbf(tx, x, sigma) @ coef + b
    if len(classes) == 2:
        return classes[(dec[:, 0] > 0).astype(int)]
    return classes[dec.argmax(1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.dir, "meta.json")))
    load = lambda n: np.load(os.path.join(a.dir, n))
    x, y, tx, ty = load("x.npy"), load("y.npy"), load("test_x.npy"), load("test_y.npy")
    out = {"numpy": np.__version__, "scipy": scipy.__version__}
    if "scipy" in meta["modes"]:
        t0 = time.perf_counter()
        pred = lssvm(x, y, tx, meta["sigma"], meta["gamma"])
        out["scipy_seconds"] = time.perf_counter() - t0
        out["scipy_accuracy"] = float((pred == ty).mean())
    if "svc" in meta["modes"]:
        from sklearn.svm import SVC

        t0 = time.perf_counter()
        svc = SVC(C=meta["gamma"], gamma=1.0 / meta["sigma"] ** 2, decision_function_shape="ovr").fit(x, y)
        pred = svc.predict(tx)
        out["svc_seconds"] = time.perf_counter() - t0
        out["svc_accuracy"] = float((pred == ty).mean())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
