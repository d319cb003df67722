#!/usr/bin/env python3
"""Baseline: per-sample input-curvature scores with JAX, from the same math as rote
(ALGORITHMS.md section 2): Hutchinson with exact Hessian-vector products,
score = mean over probes of ||H v||^2 with H v = jvp(grad(loss)).

Reads a directory written by `rote bench curvature`: x.npy (B, d), y.npy (B,),
probes.npy (B, P, d), w{l}.npy (out, in) and b{l}.npy for each layer, and
meta.json ({"activation": ...}). Writes scores.npy and prints JSON timing.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

ACTS = {
    "relu": jax.nn.relu,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    meta = json.load(open(f"{a.dir}/meta.json"))
    act = ACTS[meta["activation"]]
    layers = meta["layers"]
    params = [(jnp.asarray(np.load(f"{a.dir}/w{l}.npy")), jnp.asarray(np.load(f"{a.dir}/b{l}.npy"))) for l in range(layers)]
    x = jnp.asarray(np.load(f"{a.dir}/x.npy"))
    y = jnp.asarray(np.load(f"{a.dir}/y.npy").astype(np.int32))
    v = jnp.asarray(np.load(f"{a.dir}/probes.npy"))

    def loss(xi, yi):
        h = xi
        for l, (w, b) in enumerate(params):
            h = h @ w.T + b
            if l + 1 < layers:
                h = act(h)
        return jax.nn.logsumexp(h) - h[yi]

    def hvp(xi, yi, vi):
        return jax.jvp(lambda t: jax.grad(loss)(t, yi), (xi,), (vi,))[1]

    def score(xi, yi, vs):
        hv = jax.vmap(lambda vi: hvp(xi, yi, vi))(vs)
        return jnp.mean(jnp.sum(hv * hv, axis=-1))

    scores = jax.jit(jax.vmap(score))
    out = scores(x, y, v).block_until_ready()  # compile
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        out = scores(x, y, v).block_until_ready()
        times.append(time.perf_counter() - t0)
    np.save(f"{a.dir}/scores.npy", np.asarray(out))
    med = float(np.median(times))
    print(json.dumps({"median_seconds": med, "seconds": times, "samples_per_second": x.shape[0] / med,
                      "jax": jax.__version__, "backend": jax.default_backend()}))


if __name__ == "__main__":
    main()
