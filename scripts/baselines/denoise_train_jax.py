#!/usr/bin/env python3
"""Baseline: training the same EDM denoiser network as rote (src/diffusion/net.rs) in
JAX on the CPU: positional embedding of c_noise, a two-layer embedding MLP, a residual
MLP with SiLU, EDM preconditioning (sigma_data = 0.5, ln sigma ~ N(-1.2, 1.2^2)), the
loss |F - (y - c_skip x)/c_out|^2 (= lambda(sigma)|D - y|^2 / c_out^2 ... = the EDM
loss, since lambda c_out^2 = 1), Adam and an EMA, one jit-compiled step.

Reads y.npy (N x D, model space) from --dir; prints JSON with samples/s over --steps
timed steps after a warm-up, and the mean loss of the last 100 steps.
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

EMBED = 64


def init(key, d, h, blocks):
    params = {}
    def linear(key, fan_in, fan_out, zero=False):
        k1, k2 = jax.random.split(key)
        bound = 1.0 / np.sqrt(fan_in)
        if zero:
            return jnp.zeros((fan_out, fan_in)), jnp.zeros((fan_out,))
        return (jax.random.uniform(k1, (fan_out, fan_in), minval=-bound, maxval=bound),
                jax.random.uniform(k2, (fan_out,), minval=-bound, maxval=bound))
    keys = jax.random.split(key, 4 + 2 * blocks)
    params["map0"] = linear(keys[0], EMBED, h)
    params["map1"] = linear(keys[1], h, h)
    params["input"] = linear(keys[2], d, h)
    params["blocks"] = [(linear(keys[4 + 2 * b], h, h), linear(keys[5 + 2 * b], h, h)) for b in range(blocks)]
    params["output"] = linear(keys[3], h, d, zero=True)
    return params


def embedding(c):
    half = EMBED // 2
    f = 10000.0 ** (-jnp.arange(half) / half)
    a = c[:, None] * f[None, :]
    return jnp.concatenate([jnp.cos(a), jnp.sin(a)], axis=1)


def net(params, x_in, c_noise):
    silu = jax.nn.silu
    lin = lambda p, z: z @ p[0].T + p[1]
    e = lin(params["map1"], silu(lin(params["map0"], embedding(c_noise))))
    h = lin(params["input"], x_in)
    for p1, p2 in params["blocks"]:
        h = h + lin(p2, silu(lin(p1, silu(h)) + e))
    return lin(params["output"], silu(h))


def loss_fn(params, y, sigma, eps):
    sd = 0.5
    s2 = sigma ** 2 + sd ** 2
    c_skip, c_out, c_in = sd ** 2 / s2, sigma * sd / jnp.sqrt(s2), 1.0 / jnp.sqrt(s2)
    x = y + sigma[:, None] * eps
    f = net(params, c_in[:, None] * x, jnp.log(sigma) / 4.0)
    target = (y - c_skip[:, None] * x) / c_out[:, None]
    return jnp.mean((f - target) ** 2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.99)
    a = p.parse_args()
    Y = jnp.asarray(np.load(os.path.join(a.dir, "y.npy")).astype(np.float32))
    n, d = Y.shape
    params = init(jax.random.PRNGKey(0), d, a.width, a.blocks)
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    ema = params

    @jax.jit
    def step(params, m, v, ema, t, key):
        k1, k2, k3 = jax.random.split(key, 3)
        idx = jax.random.randint(k1, (a.batch,), 0, n)
        sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(k2, (a.batch,)))
        eps = jax.random.normal(k3, (a.batch, d))
        loss, g = jax.value_and_grad(loss_fn)(params, Y[idx], sigma, eps)
        b1, b2 = 0.9, 0.999
        m = jax.tree.map(lambda mi, gi: b1 * mi + (1 - b1) * gi, m, g)
        v = jax.tree.map(lambda vi, gi: b2 * vi + (1 - b2) * gi * gi, v, g)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        params = jax.tree.map(lambda pi, mi, vi: pi - a.lr * (mi / c1) / (jnp.sqrt(vi / c2) + 1e-8), params, m, v)
        ema = jax.tree.map(lambda ei, pi: a.ema * ei + (1 - a.ema) * pi, ema, params)
        return params, m, v, ema, loss

    key = jax.random.PRNGKey(1)
    for t in range(1, 21):  # compile and warm up
        key, sub = jax.random.split(key)
        params, m, v, ema, loss = step(params, m, v, ema, t, sub)
    loss.block_until_ready()
    losses = []
    t0 = time.perf_counter()
    for t in range(21, 21 + a.steps):
        key, sub = jax.random.split(key)
        params, m, v, ema, loss = step(params, m, v, ema, t, sub)
        losses.append(loss)
    jax.block_until_ready(ema)
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "samples_per_second": a.steps * a.batch / dt,
                      "loss_last_100": float(np.mean([float(l) for l in losses[-100:]]))}))


if __name__ == "__main__":
    main()
