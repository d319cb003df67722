"""rote.ray on a local Ray cluster: each job split into shards over Ray tasks equals one
process's result byte for byte. Needs ray (scripts/test.sh installs it into the test
venv and sets ROTE_REQUIRE_RAY=1, so there a missing ray fails instead of skipping).
"""

import os

import numpy as np
import pytest

if os.environ.get("ROTE_REQUIRE_RAY") == "1":
    import ray
else:
    ray = pytest.importorskip("ray")

import rote
import rote.ray
from test_rote import cli


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"ROTE_DISABLE_CUDA": "1"}})
    yield
    ray.shutdown()


def test_curvature_sampling_and_knn_over_ray_equal_one_process(cluster, tmp_path):
    cli("train", "--data", "digits", "--model", "mlp:64-32-10,act=gelu", "--epochs", "2", "--batch", "64", "--label-noise", "0.1", "--device", "cpu", "--out", tmp_path / "run")
    one = rote.curvature(tmp_path / "run", estimator="hutchinson", probes=4, device="cpu")
    many = rote.ray.curvature(tmp_path / "run", shards=5, estimator="hutchinson", probes=4, device="cpu")
    assert many["shards"] == 5 and many["rows"] == one["rows"] and many["corrupted"] == one["corrupted"]
    for key in ("score", "trace"):
        assert many[key].dtype == np.float32 and many[key].tobytes() == one[key].tobytes(), key

    x1 = rote.sample(data="digits", subset=60, samples=10, steps=6, seed=3, device="cpu")
    xr = rote.ray.sample(shards=3, data="digits", subset=60, samples=10, steps=6, seed=3, device="cpu")
    assert xr.shape == x1.shape and xr.tobytes() == x1.tobytes()

    rng = np.random.default_rng(7)
    train = rng.uniform(-1, 1, size=(3000, 32)).astype(np.float32)
    queries = rng.uniform(-1, 1, size=(101, 32)).astype(np.float32)
    i1, v1 = rote.knn(train, queries, 3, device="cpu")
    ir, vr = rote.ray.knn(train, queries, 3, shards=4, device="cpu")
    assert ir.tobytes() == i1.tobytes() and vr.tobytes() == v1.tobytes()
    print(f"ray {ray.__version__}: curvature of {len(one['score'])} samples in 5 shards, 10 samples in 3 shards, kNN of 101 queries in 4 shards: byte-identical to one process")
