"""The file-based workflows from Python against the CLI on the same inputs: datasets,
construction, training runs, curvature of runs (and its shards), sampling, shadow-model
pools with memorization and membership inference, EMM.

Run by scripts/test.sh like test_rote.py (ROTE_BIN is the release CLI).
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import rote
from test_rote import ENV, ROTE_BIN, cli


def files_of(d: Path):
    return sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())


def test_dataset_reads_a_spec_as_the_cli_writes_it_and_save_dataset_round_trips(tmp_path):
    cli("data", "gen", "digits", "--out", tmp_path / "cli")
    ds = rote.dataset("digits")
    x = np.load(tmp_path / "cli" / "x.npy")
    assert ds["x"].dtype == x.dtype and ds["x"].tobytes() == x.tobytes()
    assert ds["y"].tobytes() == np.load(tmp_path / "cli" / "y.npy").astype(np.int64).tobytes()
    assert ds["sample_shape"] == list(x.shape[1:]) and ds["classes"] == 10
    # A subset spec: the same rows the CLI picks.
    sub = rote.dataset("digits:subset=30")
    cli("data", "gen", "digits:subset=30", "--out", tmp_path / "sub")
    assert sub["x"].tobytes() == np.load(tmp_path / "sub" / "x.npy").tobytes()

    out = tmp_path / "mine"
    rote.save_dataset(out, ds["x"][:100], ds["y"][:100], x_test=ds["x"][100:150], y_test=ds["y"][100:150], name="few-digits")
    info = json.loads(cli("data", "info", out, "--json"))
    assert (info["n"], info["n_test"], info["name"]) == (100, 50, "few-digits")
    again = rote.dataset(str(out))
    assert again["x"].tobytes() == ds["x"][:100].tobytes() and again["y_test"].tobytes() == ds["y"][100:150].tobytes()
    with pytest.raises(rote.RoteError, match="already holds a dataset"):
        rote.save_dataset(out, ds["x"][:10], ds["y"][:10])
    with pytest.raises(rote.RoteError, match="labels"):
        rote.save_dataset(tmp_path / "bad", ds["x"][:10], ds["y"][:9])
    with pytest.raises(rote.RoteError):
        rote.dataset("no-such-data")


def test_construct_equals_the_cli_and_saved_networks_are_the_same_bytes(tmp_path):
    spec = "moons:n=300,noise=0.1,seed=2"
    want = json.loads(cli("construct", "--data", spec, "--width", "300", "--max-bias", "1.5", "--seed", "4", "--device", "cpu", "--out", tmp_path / "cli.safetensors", "--json"))
    net, report = rote.construct(spec, 300, 1.5, seed=4, device="cpu")
    for r in (want, report):
        r.pop("fit_seconds")
    assert report == want and report["interpolated"]
    net.save(tmp_path / "py.safetensors")
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    loaded = rote.ThresholdNetwork.load(tmp_path / "cli.safetensors")
    assert (loaded.first_width, loaded.parameters) == (300, report["parameters"])
    ds = rote.dataset(spec)
    assert (loaded.predict(ds["x"], device="cpu") == ds["y"]).all()
    assert loaded.accuracy(spec, device="cpu") == json.loads(cli("predict", "--net", tmp_path / "cli.safetensors", "--data", spec, "--device", "cpu", "--json"))
    with pytest.raises(rote.RoteError, match="features"):
        loaded.predict(np.zeros((3, 5), np.float32))
    with pytest.raises(rote.RoteError, match="activation"):
        rote.construct(spec, 10, 1.0, activation="sigmoid")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    args = dict(epochs=2, batch=32, label_noise=0.1, seed=1)
    cli("train", "--data", "digits", "--model", "mlp:64-32-10,act=gelu", "--epochs", "2", "--batch", "32", "--label-noise", "0.1", "--seed", "1", "--device", "cpu", "--out", d / "cli")
    seen = []
    summary = rote.train("digits", "mlp:64-32-10,act=gelu", d / "py", device="cpu", progress=lambda done, total: seen.append((done, total)), **args)
    return d, summary, seen


def test_train_writes_the_run_the_cli_writes(runs):
    d, summary, seen = runs
    assert files_of(d / "py") == files_of(d / "cli")
    for f in files_of(d / "cli"):
        if f.name in ("metrics.csv", "complete.json"):
            continue  # wall-clock seconds
        assert (d / "py" / f).read_bytes() == (d / "cli" / f).read_bytes(), f
    strip = lambda p: [line.rsplit(",", 1)[0] for line in p.read_text().splitlines()]
    assert strip(d / "py" / "metrics.csv") == strip(d / "cli" / "metrics.csv")
    assert summary["epochs"] == 2 and summary["device"] == "cpu" and 0 < summary["train_accuracy"] <= 1
    assert seen[-1][0] == seen[-1][1] > 0
    with pytest.raises(rote.RoteError, match="already holds a training run"):
        rote.train("digits", "mlp:64-32-10,act=gelu", d / "py", epochs=1)
    with pytest.raises(rote.RoteError, match="schedule"):
        rote.train("digits", "mlp:64-10", d / "other", schedule="sometimes")


def test_evaluate_equals_the_cli(runs):
    d, summary, _ = runs
    pattern = str(d / "py" / "checkpoints" / "*.safetensors")
    want = json.loads(cli("eval", "--model", "mlp:64-32-10,act=gelu", "--weights", pattern, "--data", "digits", "--json"))
    got = rote.evaluate("mlp:64-32-10,act=gelu", pattern, "digits")
    assert got["checkpoints"] == want["checkpoints"] and got["input_scale"] == want["input_scale"]
    assert [Path(c["checkpoint"]).name for c in got["checkpoints"]] == ["epoch-001.safetensors", "epoch-002.safetensors"]
    with pytest.raises(rote.RoteError):
        rote.evaluate("mlp:64-16-10", pattern, "digits")


def test_curvature_of_a_run_and_its_shards_equal_the_cli(runs, tmp_path):
    d, _, _ = runs
    cli("curvature", "--run", d / "cli", "--estimator", "hutchinson", "--probes", "4", "--device", "cpu", "--out", tmp_path / "cli")
    got = rote.curvature(d / "py", estimator="hutchinson", probes=4, device="cpu", out=tmp_path / "py")
    assert got["score"].tobytes() == np.load(tmp_path / "cli" / "score.npy").tobytes()
    assert got["trace"].tobytes() == np.load(tmp_path / "cli" / "trace.npy").tobytes()
    assert [Path(c).name for c in got["checkpoints"]] == ["epoch-001.safetensors", "epoch-002.safetensors"]
    assert got["corrupted"] > 0 and 0.5 < got["auroc"] <= 1
    for f in files_of(tmp_path / "cli"):
        if f.suffix == ".npy":
            assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    n = len(got["score"])
    parts = [rote.curvature(d / "py", estimator="hutchinson", probes=4, device="cpu", shard=f"{i}/3") for i in range(3)]
    assert parts[0]["rows"][0] == 0 and parts[-1]["rows"][1] == n
    assert np.concatenate([p["score"] for p in parts]).tobytes() == got["score"].tobytes()
    # Slurm's array variables pick the same shard.
    env = dict(os.environ)
    try:
        os.environ.update(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_TASK_MIN="0")
        auto = rote.curvature(d / "py", estimator="hutchinson", probes=4, device="cpu", shard="auto")
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert auto["rows"] == parts[1]["rows"] and auto["score"].tobytes() == parts[1]["score"].tobytes()
    # Checkpoints trained elsewhere: the same weights as a series.
    series = rote.curvature(weights=str(d / "py" / "checkpoints" / "*.safetensors"), model="mlp:64-32-10,act=gelu", data="digits", estimator="hutchinson", probes=4, device="cpu")
    assert series["score"].shape == (1797,)
    with pytest.raises(rote.RoteError, match="not a training run"):
        rote.curvature(tmp_path)
    with pytest.raises(rote.RoteError, match="shard"):
        rote.curvature(d / "py", shard="3/3")


def test_sampling_equals_the_cli(tmp_path):
    cli("denoise", "sample", "--data", "digits", "--subset", "40", "--samples", "6", "--steps", "5", "--seed", "2", "--device", "cpu", "--out", tmp_path / "s")
    steps = []
    x = rote.sample(data="digits", subset=40, samples=6, steps=5, seed=2, device="cpu", progress=lambda done, total: steps.append(done))
    assert x.shape == (6, 8, 8) and x.dtype == np.float32
    assert rote.quantize(x).tobytes() == np.load(tmp_path / "s" / "samples.npy").tobytes()
    assert steps == [1, 2, 3, 4, 5]
    with pytest.raises(rote.RoteError, match="not both"):
        rote.sample(data="digits", run=tmp_path)
    with pytest.raises(rote.RoteError, match="samples"):
        rote.sample(data="digits", samples=0)


@pytest.mark.parametrize("model", ["resmlp:width=32,blocks=1", "unet:channels=8,mult=1-2"])
def test_a_trained_denoiser_and_its_samples_equal_the_cli(tmp_path, model):
    settings = dict(subset=20, steps=60, batch=16, model=model, seed=4)
    cli("denoise", "train", "--data", "digits", "--subset", "20", "--steps", "60", "--batch", "16", "--model", model, "--seed", "4", "--device", "cpu", "--out", tmp_path / "cli")
    seen = []
    summary = rote.train_denoiser("digits", tmp_path / "py", device="cpu", progress=lambda done, total: seen.append(done), **settings)
    assert summary["steps"] == 60 and summary["training_samples"] == 20 and np.isfinite(summary["final_loss"])
    assert seen[-1] == 60
    for f in files_of(tmp_path / "cli"):
        if f.suffix == ".safetensors":
            assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    cli("denoise", "sample", "--run", tmp_path / "cli", "--samples", "5", "--steps", "4", "--device", "cpu", "--out", tmp_path / "s")
    x = rote.sample(run=tmp_path / "py", samples=5, steps=4, device="cpu")
    assert rote.quantize(x).tobytes() == np.load(tmp_path / "s" / "samples.npy").tobytes()


def test_resume_continues_a_run_the_cli_left_unfinished(tmp_path):
    args = ["denoise", "train", "--data", "digits", "--subset", "12", "--model", "resmlp:width=32,blocks=1", "--steps", "250", "--batch", "8", "--checkpoint-every", "100", "--device", "cpu"]
    cli(*args, "--out", tmp_path / "whole")
    cut = subprocess.run([ROTE_BIN, *args, "--out", str(tmp_path / "cut")], env={**ENV, "ROTE_FAILPOINT": "denoise-after-state:100"}, capture_output=True)
    assert cut.returncode != 0 and (tmp_path / "cut" / "state.safetensors").exists()
    summary = rote.train_denoiser("ignored", tmp_path / "cut", resume=True, device="cpu")
    assert summary["resumed"] and summary["steps"] == 250
    assert (tmp_path / "cut" / "ema.safetensors").read_bytes() == (tmp_path / "whole" / "ema.safetensors").read_bytes()
    with pytest.raises(rote.RoteError, match="finished"):
        rote.train_denoiser("ignored", tmp_path / "cut", resume=True, device="cpu")


def test_pool_memorization_and_membership_inference_equal_the_cli(tmp_path):
    recipe = ["--data", "digits:subset=20", "--model", "mlp:64-32-10", "--models", "6", "--epochs", "3", "--batch", "16"]
    cli("pool", "train", *recipe, "--out", tmp_path / "cli")
    summary = rote.pool_train("digits:subset=20", "mlp:64-32-10", tmp_path / "py", models=6, epochs=3, batch=16)
    assert summary["trained"] == 6
    for f in files_of(tmp_path / "cli"):
        if f.suffix in (".npy", ".safetensors"):
            assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    cli("mem", "--pool", tmp_path / "cli", "--out", tmp_path / "mem")
    m = rote.memorization(tmp_path / "py")
    assert m["mem"].astype(np.float32).tobytes() == np.load(tmp_path / "mem" / "mem.npy").tobytes()
    assert m["se_probability"].astype(np.float32).tobytes() == np.load(tmp_path / "mem" / "mem_probability_se.npy").tobytes()
    want = json.loads(cli("mia", "--pool", tmp_path / "cli", "--attack", "lira-offline", "--bootstrap", "0", "--out", tmp_path / "mia", "--json"))
    got = rote.mia(tmp_path / "py", attack="lira-offline")
    assert got["scores"].astype(np.float32).tobytes() == np.load(tmp_path / "mia" / "scores.npy").tobytes()
    assert (got["members"] == np.load(tmp_path / "mia" / "members.npy").astype(bool)).all()
    assert got["auc"] == want["metrics"]["auc"] and got["tpr_at_fpr"][0.001] == want["metrics"]["tpr_at_0.1%_fpr"]
    want = json.loads(cli("choi", "--pool", tmp_path / "cli", "--select", "top:20%", "--shadows", "2,5", "--out", tmp_path / "choi", "--json"))
    got = rote.choi(tmp_path / "py", select="top:20%", shadows=[2, 5])
    assert got["selected"] == want["selected"] > 0
    assert [p["shadows"] for p in got["points"]] == [2, 5]
    auc = lambda m: None if m is None else m["auc"]
    for g, w in zip(got["points"], want["points"]):
        assert (auc(g["selected"]), auc(g["all"]), g["scored"]) == (auc(w["selected"]), auc(w["all"]), w["scored"])
    assert got["points"][-1]["all"] is not None, "five shadows score the pool"
    with pytest.raises(rote.RoteError, match="shadow models is not possible"):
        rote.choi(tmp_path / "py", shadows=[6])
    with pytest.raises(rote.RoteError, match="attack"):
        rote.mia(tmp_path / "py", attack="guess")
    with pytest.raises(rote.RoteError, match="shadows"):
        rote.mia(tmp_path / "py", shadows=6)


def test_emm_equals_the_cli(tmp_path):
    model = "resmlp:width=128,blocks=2"
    settings = ["--sizes", "10,200", "--steps", "2000", "--samples", "32", "--model", model, "--threshold", "0.5"]
    want = json.loads(cli("emm", "--data", "digits", *settings, "--device", "cpu", "--out", tmp_path / "cli", "--json"))
    got = rote.emm("digits", [10, 200], tmp_path / "py", steps=2000, samples=32, model=model, threshold=0.5, device="cpu")
    for k in ("emm", "all_above_threshold", "threshold", "sizes"):
        assert got[k] == want[k], k
    # Ten training images are copied, two hundred are not.
    assert got["emm"] == 10 and got["sizes"][0]["memorization_ratio"] > 0.5 > got["sizes"][1]["memorization_ratio"]
    strip = lambda p: [line.rsplit(",", 1)[0] for line in p.read_text().splitlines()]  # training seconds
    assert strip(tmp_path / "py" / "emm.csv") == strip(tmp_path / "cli" / "emm.csv")


def test_knn_classify_equals_the_cli(tmp_path):
    rng = np.random.default_rng(11)
    keys = rng.normal(size=(400, 16)).astype(np.float32)
    labels = rng.integers(0, 5, size=400).astype(np.int64)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    probs = rng.dirichlet(np.ones(5), size=30)
    for name, a in [("keys", keys), ("labels", labels), ("q", queries), ("p", probs)]:
        np.save(tmp_path / f"{name}.npy", a)
    for combine in ("standard", "retroprompt"):
        out = tmp_path / combine
        cli("knn", "classify", "--store", tmp_path / "keys.npy", "--labels", tmp_path / "labels.npy", "--queries", tmp_path / "q.npy", "--probs", tmp_path / "p.npy", "-k", "8", "--lambda", "0.3", "--combine", combine, "--device", "cpu", "--out", out)
        got = rote.knn_classify(keys, labels, queries, probs=probs, k=8, lambda_=0.3, combine=combine, device="cpu")
        assert got["p_knn"].tobytes() == np.load(out / "p_knn.npy").tobytes()
        assert got["combined"].tobytes() == np.load(out / "combined.npy").tobytes()
        assert (got["predictions"] == np.load(out / "predictions.npy")).all()
    # λ = 0 is the model's distribution; without probabilities, retrieval alone.
    assert np.array_equal(rote.knn_classify(keys, labels, queries, probs=probs, lambda_=0.0, device="cpu")["combined"], probs)
    alone = rote.knn_classify(keys, labels, queries, device="cpu")
    np.testing.assert_allclose(alone["p_knn"].sum(1), 1.0, rtol=1e-12)
    with pytest.raises(rote.RoteError, match="labels"):
        rote.knn_classify(keys, labels[:10], queries)
