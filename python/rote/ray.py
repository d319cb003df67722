"""rote jobs over a Ray cluster: the work split into shards, one Ray task each, merged
here into exactly what one process computes (byte for byte: every shard computes its
samples as the whole job would, and the merge only concatenates).

    import ray, rote.ray
    ray.init()                       # or ray.init(address="auto") on a cluster
    s = rote.ray.curvature("runs/cifar", shards=32, num_gpus=1, estimator="fd")
    x = rote.ray.sample(shards=8, data="cifar10", samples=50_000)
    idx, dist = rote.ray.knn(train, queries, k=2, shards=8)

Paths (runs, data directories) must be readable by every node: a shared file system,
as under Slurm. Arrays (`knn`) travel through Ray's object store. Each task runs
`rote.curvature` / `rote.sample` / `rote.knn` with `shard="I/N"`; `num_cpus` and
`num_gpus` are the Ray resources each task asks for (with `num_gpus`, pass
`device="cuda:0"`: Ray makes the GPU it assigns the task's first visible one).

Ray is imported only when a function here is called; `pip install ray` to use it.
"""

from typing import Any, Optional

import numpy as np


def shard_rows(total: int, index: int, count: int) -> range:
    """The rows shard `index` of `count` holds, as rote's `--shard I/N` splits them."""
    return range(total * index // count, total * (index + 1) // count)


def _remote(fn, num_cpus: Optional[float], num_gpus: Optional[float]):
    import ray

    opts = {}
    if num_cpus is not None:
        opts["num_cpus"] = num_cpus
    if num_gpus is not None:
        opts["num_gpus"] = num_gpus
    task = ray.remote(fn)
    return task.options(**opts) if opts else task


def _curvature_shard(run, shard, kwargs):
    import rote

    return rote.curvature(run, shard=shard, **kwargs)


def curvature(run=None, *, shards: int, num_cpus: Optional[float] = None, num_gpus: Optional[float] = None, **kwargs: Any) -> dict:
    """`rote.curvature(run, …)` with its samples split into `shards` Ray tasks. Returns
    the dict one process returns (score, trace, gauss_newton concatenated; the rows
    are the whole range; seconds the sum over tasks; auroc and precision_at_k from the
    merged scores are not recomputed and left None unless one task held every row)."""
    import ray

    if shards < 1:
        raise ValueError("shards must be at least 1")
    if "out" in kwargs or "shard" in kwargs:
        raise ValueError("rote.ray.curvature shards and merges in memory: out and shard are not taken")
    task = _remote(_curvature_shard, num_cpus, num_gpus)
    parts = ray.get([task.remote(run, f"{i}/{shards}", kwargs) for i in range(shards)])
    merged = dict(parts[0])
    for key in ("score", "trace", "gauss_newton"):
        if parts[0][key] is not None:
            merged[key] = np.concatenate([p[key] for p in parts])
    merged["rows"] = (parts[0]["rows"][0], parts[-1]["rows"][1])
    merged["samples"] = sum(p["samples"] for p in parts)
    merged["corrupted"] = sum(p["corrupted"] for p in parts)
    merged["seconds"] = sum(p["seconds"] for p in parts)
    if shards > 1:
        merged["auroc"] = merged["precision_at_k"] = None
    merged["shards"] = shards
    return merged


def _sample_shard(shard, kwargs):
    import rote

    return rote.sample(shard=shard, **kwargs)


def sample(*, shards: int, num_cpus: Optional[float] = None, num_gpus: Optional[float] = None, **kwargs: Any) -> np.ndarray:
    """`rote.sample(…)` split into `shards` Ray tasks; the samples of one process."""
    import ray

    if shards < 1:
        raise ValueError("shards must be at least 1")
    if "shard" in kwargs:
        raise ValueError("rote.ray.sample chooses the shards itself")
    task = _remote(_sample_shard, num_cpus, num_gpus)
    return np.concatenate(ray.get([task.remote(f"{i}/{shards}", kwargs) for i in range(shards)]))


def _knn_shard(train, queries, k, kwargs):
    import rote

    return rote.knn(train, queries, k, **kwargs)


def knn(train: np.ndarray, queries: np.ndarray, k: int = 1, *, shards: int, num_cpus: Optional[float] = None, num_gpus: Optional[float] = None, **kwargs: Any):
    """`rote.knn(train, queries, k, …)` with the queries split into `shards` Ray tasks
    (the training rows shared through the object store); one process's (indices,
    values)."""
    import ray

    if shards < 1:
        raise ValueError("shards must be at least 1")
    train_ref = ray.put(np.ascontiguousarray(train, dtype=np.float32))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    task = _remote(_knn_shard, num_cpus, num_gpus)
    refs = []
    for i in range(shards):
        rows = shard_rows(len(queries), i, shards)
        if len(rows):
            refs.append(task.remote(train_ref, queries[rows.start : rows.stop], k, kwargs))
    parts = ray.get(refs)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
