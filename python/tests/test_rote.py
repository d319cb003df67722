"""The Python package against the CLI on the same inputs (byte-identical arrays where
the CLI is deterministic), errors as exceptions, the GIL released during compute.

Run by scripts/test.sh (which builds the wheel into .tools/pyvenv) with ROTE_BIN set to
the release CLI; `python -m pytest python/tests` by hand the same way.
"""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import rote

ROOT = Path(__file__).resolve().parents[2]
ROTE_BIN = os.environ.get("ROTE_BIN", str(ROOT / "target" / "release" / "rote"))
ENV = dict(os.environ, ROTE_DISABLE_CUDA="1")


def cli(*args):
    out = subprocess.run([ROTE_BIN, *map(str, args)], env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, f"rote {args} failed:\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    cli("data", "gen", "digits", "--out", d / "data")
    cli("train", "--data", "digits", "--model", "mlp:64-32-10,act=gelu", "--epochs", "2", "--batch", "32", "--out", d / "run")
    cli("curvature", "--run", d / "run", "--estimator", "hutchinson", "--out", d / "scores")
    return d


def test_curvature_scores_equal_the_cli_byte_for_byte(digits_run):
    d = digits_run
    cfg = json.loads((d / "run" / "run.json").read_text())
    x = np.load(d / "data" / "x.npy").astype(np.float32) * np.float32(cfg["input_scale"])
    labels = np.load(d / "run" / "labels.npy").astype(np.int64)
    sources = np.load(d / "run" / "sources.npy")
    x = np.ascontiguousarray(x[sources])
    for epoch in ["epoch-001", "epoch-002"]:
        weights = rote.load_state_dict(d / "run" / "checkpoints" / f"{epoch}.safetensors")
        assert set(weights) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        seen = []
        got = rote.curvature_scores(cfg["model"], weights, x, labels, estimator="hutchinson", device="cpu", progress=lambda done, total: seen.append((done, total)))
        want = np.load(d / "scores" / f"score-{epoch}.npy")
        assert got["score"].dtype == np.float32 and got["score"].shape == want.shape
        assert got["score"].tobytes() == want.tobytes()
        assert got["trace"].tobytes() == np.load(d / "scores" / f"trace-{epoch}.npy").tobytes()
        assert seen[-1] == (len(labels), len(labels))
        assert got["device"] == "cpu"


def test_bad_weights_and_inputs_raise_rote_errors(digits_run):
    d = digits_run
    weights = rote.load_state_dict(d / "run" / "checkpoints" / "epoch-001.safetensors")
    x = np.zeros((4, 8, 8), np.float32)
    y = np.zeros(4, np.int64)
    wrong = dict(weights)
    wrong["0.weight"] = wrong["0.weight"][:, :10]
    with pytest.raises(rote.RoteError, match="0.weight"):
        rote.curvature_scores("mlp:64-32-10,act=gelu", wrong, x, y)
    extra = dict(weights, stray=np.zeros(3, np.float32))
    with pytest.raises(rote.RoteError, match="stray"):
        rote.curvature_scores("mlp:64-32-10,act=gelu", extra, x, y)
    with pytest.raises(rote.RoteError, match="labels"):
        rote.curvature_scores("mlp:64-32-10,act=gelu", weights, x, y[:3])
    with pytest.raises(rote.RoteError, match="estimator"):
        rote.curvature_scores("mlp:64-32-10,act=gelu", weights, x, y, estimator="magic")
    with pytest.raises(rote.RoteError, match="device"):
        rote.curvature_scores("mlp:64-32-10,act=gelu", weights, x, y, device="tpu")


def test_knn_equals_the_cli(tmp_path):
    rng = np.random.default_rng(3)
    train = rng.uniform(-1, 1, size=(500, 16)).astype(np.float32)
    queries = rng.uniform(-1, 1, size=(40, 16)).astype(np.float32)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "x.npy", train)
    np.save(tmp_path / "data" / "y.npy", np.zeros(len(train), np.int64))
    np.save(tmp_path / "q.npy", queries)
    idx, dist = rote.knn(train, queries, 5, device="cpu")
    cli("knn", "--data", tmp_path / "data", "--queries", tmp_path / "q.npy", "--k", "5", "--device", "cpu", "--out", tmp_path / "out")
    assert idx.tobytes() == np.load(tmp_path / "out" / "indices.npy").tobytes()
    assert dist.tobytes() == np.load(tmp_path / "out" / "distances.npy").tobytes()
    # Against float64 brute force.
    d64 = ((queries[:, None, :].astype(np.float64) - train[None, :, :]) ** 2).sum(-1)
    assert (np.argsort(d64, axis=1, kind="stable")[:, :5] == idx).all()
    with pytest.raises(rote.RoteError):
        rote.knn(train, queries[:, :8], 1)


def test_text_index_scan_and_memfree_equal_the_cli(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet".split()
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, 300)) for _ in range(8)]
    for i, t in enumerate(texts):
        (src / f"d{i}.txt").write_text(t)
    rep = rote.text.import_files([src], tmp_path / "c")
    assert rep["documents"] == 8
    built = rote.text.build_index(tmp_path / "c", kind="exact", normalized=True)
    assert [b["kind"] for b in built] == ["suffix-array", "suffix-array"]
    rote.text.build_index(tmp_path / "c", kind="bloom", n=20, device="cpu")
    exact = rote.text.Index(tmp_path / "c" / "exact.idx")
    bloom = rote.text.Index(tmp_path / "c" / "bloom-n20.idx")
    assert (exact.kind, exact.n, bloom.kind, bloom.n) == ("suffix-array", None, "bloom", 20)

    planted = texts[3][100:400]
    tokens = np.frombuffer(planted.encode(), dtype=np.uint8).astype(np.int64)
    assert exact.hits(tokens, 20).all() and bloom.hits(tokens).all()
    m = exact.longest_match(tokens)
    assert (m["len"], m["doc"], m["offset"]) == (300, 3, 100)
    assert exact.count(list(planted[:30].encode())) >= 1
    assert exact.memfree_choose(list(planted[:19].encode()), [ord(planted[19]), ord("z")], n=20) == 1

    gens = [{"text": planted}, {"text": "zulu " * 30}, {"text": planted.upper()}]
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(g) for g in gens))
    reports, summary = exact.scan(gens, n=20, normalized_index=rote.text.Index(tmp_path / "c" / "normalized" / "exact.idx"))
    cli("text", "scan", tmp_path / "c" / "exact.idx", "-n", "20", "--generations", tmp_path / "g.jsonl", "--out", tmp_path / "scan")
    assert summary == json.loads((tmp_path / "scan" / "summary.json").read_text())
    want = [json.loads(line) for line in (tmp_path / "scan" / "scan.jsonl").read_text().splitlines()]
    assert reports == want
    assert rote.text.normalize("Hello,  WORLD!") == "hello world"
    nidx = rote.text.Index(tmp_path / "c" / "normalized" / "exact.idx")
    rows = exact.demo(passages=10, length=120, n=20, normalized_index=nidx)
    cli_rows = json.loads(cli("text", "demo", tmp_path / "c" / "exact.idx", "-n", "20", "--passages", "10", "--length", "120", "--json"))
    assert rows == cli_rows
    by = {r["style"]: r for r in rows}
    assert by["verbatim"]["verbatim_hit_fraction"] == 1.0 and by["upper"]["normalized_hit_fraction"] == 1.0
    with pytest.raises(rote.RoteError, match="holds 20-grams"):
        bloom.hits(tokens, 21)
    with pytest.raises(rote.RoteError, match="exact index"):
        bloom.count([1, 2])


def test_the_gil_is_released_during_compute(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, size=(20000, 256)).astype(np.float32)
    queries = rng.uniform(-1, 1, size=(2000, 256)).astype(np.float32)
    ticks = []
    done = threading.Event()

    def work():
        rote.knn(train, queries, 4, device="cpu")
        done.set()

    t0 = time.perf_counter()
    th = threading.Thread(target=work)
    th.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    th.join()
    elapsed = time.perf_counter() - t0
    # The main thread kept running while rote computed: ticks spread over the call.
    assert elapsed > 0.05, "the call was too short to tell"
    assert len(ticks) > 10 and ticks[-1] - ticks[0] > 0.5 * elapsed


def test_the_tracker_keeps_the_cli_mean_over_epochs(digits_run):
    d = digits_run
    cfg = json.loads((d / "run" / "run.json").read_text())
    sources = np.load(d / "run" / "sources.npy")
    x = np.load(d / "data" / "x.npy").astype(np.float32)[sources] * np.float32(cfg["input_scale"])
    labels = np.load(d / "run" / "labels.npy")
    tracker = rote.torch.CurvatureTracker(x, labels, every=1, model=cfg["model"], estimator="hutchinson", device="cpu")
    for epoch in (1, 2):
        weights = rote.load_state_dict(d / "run" / "checkpoints" / f"epoch-{epoch:03d}.safetensors")
        s = tracker.step(epoch, weights)
        assert s["score"].tobytes() == np.load(d / "scores" / f"score-epoch-{epoch:03d}.npy").tobytes()
    assert tracker.epochs == [1, 2]
    # The CLI accumulates v/n per checkpoint in float64, the tracker the sum and then /n.
    np.testing.assert_allclose(tracker.mean, np.load(d / "scores" / "score.npy"), rtol=1e-6)
    every2 = rote.torch.CurvatureTracker(x, labels, every=2, model=cfg["model"], estimator="hutchinson")
    assert every2.step(1, weights) is None and every2.epochs == []


def test_spec_of_reads_a_sequential_without_torch():
    # Stand-ins with PyTorch's class names and attributes: spec_of reads only those.
    class Linear:
        def __init__(self, i, o):
            self.in_features, self.out_features = i, o

    class GELU:
        pass

    class Sequential:
        def __init__(self, *layers):
            self.layers = layers

        def children(self):
            return iter(self.layers)

    assert rote.torch.spec_of(Sequential(Linear(64, 32), GELU(), Linear(32, 10))) == "mlp:64-32-10,act=gelu"
    with pytest.raises(ValueError, match="takes 16 features"):
        rote.torch.spec_of(Sequential(Linear(64, 32), GELU(), Linear(16, 10)))


def test_spec_of_reads_resnet18_layouts_without_torch():
    class Conv2d:
        def __init__(self, out_channels, kernel_size, stride):
            self.out_channels, self.kernel_size, self.stride = out_channels, (kernel_size,) * 2, (stride,) * 2

    class Linear:
        def __init__(self, out_features):
            self.out_features = out_features

    class BasicBlock:
        pass

    class Sequential:
        def __init__(self, *layers):
            self.layers = layers

        def children(self):
            return iter(self.layers)

    class ResNet:
        def __init__(self, conv1, blocks=2, **heads):
            self.conv1 = conv1
            for i in range(1, 5):
                setattr(self, f"layer{i}", Sequential(*[BasicBlock() for _ in range(blocks)]))
            for k, v in heads.items():
                setattr(self, k, v)

    cifar = ResNet(Conv2d(16, 3, 1), linear=Linear(100))
    assert rote.torch.spec_of(cifar) == "resnet18-cifar:classes=100,width=16"
    tv = ResNet(Conv2d(64, 7, 2), fc=Linear(1000), maxpool=object())
    assert rote.torch.spec_of(tv) == "resnet18:classes=1000"
    with pytest.raises(ValueError, match="ResNet-18"):
        rote.torch.spec_of(ResNet(Conv2d(64, 7, 2), blocks=3, fc=Linear(10), maxpool=object()))


def test_optimal_denoiser_and_memorization_ratio_against_float64_numpy():
    rng = np.random.default_rng(5)
    train = rng.uniform(-1, 1, size=(300, 12)).astype(np.float32)
    queries = rng.uniform(-1, 1, size=(25, 12)).astype(np.float32)
    for sigma in (0.05, 0.5, 5.0):
        got = rote.optimal_denoise(train, queries, sigma)
        d2 = ((queries[:, None, :].astype(np.float64) - train[None].astype(np.float64)) ** 2).sum(-1)
        logits = -d2 / (2 * sigma * sigma)
        w = np.exp(logits - logits.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        want = w @ train.astype(np.float64)
        np.testing.assert_allclose(got, want, atol=1e-5)
    # Generated samples: near-copies of training rows and fresh points.
    copies = train[:10] + np.float32(1e-3) * rng.normal(size=(10, 12)).astype(np.float32)
    gen = np.concatenate([copies, queries]).astype(np.float32)
    m = rote.memorization_ratio(train, gen, device="cpu")
    d = np.sqrt(((gen[:, None, :].astype(np.float64) - train[None]) ** 2).sum(-1))
    two = np.sort(d, axis=1)[:, :2]
    np.testing.assert_allclose(m["ratios"], two[:, 0] / two[:, 1], rtol=1e-6)
    assert m["memorized"] == int((two[:, 0] / two[:, 1] < 1 / 3).sum()) and m["memorized"] >= 10
    assert (m["neighbours"][:10, 0] == np.arange(10)).all()


def test_lssvm_equals_the_cli(tmp_path):
    d = tmp_path
    cli("lssvm", "fit", "--data", "digits", "--kernel", "rbf:sigma=2", "--gamma", "10", "--out", d / "m")
    cli("lssvm", "predict", "--model", d / "m", "--data", "digits", "--split", "train", "--out", d / "pred.npy")
    cli("data", "gen", "digits", "--out", d / "data")
    x = np.load(d / "data" / "x.npy").astype(np.float64)
    x = x.reshape(len(x), -1) / x.max()
    y = np.load(d / "data" / "y.npy").astype(np.int64)
    model = rote.Lssvm(x, y, kernel="rbf:sigma=2", gamma=10.0)
    assert (model.predict(x) == np.load(d / "pred.npy")).all()
    with pytest.raises(rote.RoteError, match="sigma"):
        rote.Lssvm(x, y, kernel="rbf:sigma=-1")
    assert model.solver["solver"] == "direct"
    for kind in ("mimm", "wimm"):
        cli("lssvm", "fit", "--data", "digits", "--kernel", "rbf:sigma=2", "--gamma", "10", "--memory", kind, "--memory-fn", "gauss:sigma=0.5", "--memory-weight", "2", "--out", d / kind)
        cli("lssvm", "predict", "--model", d / kind, "--data", "digits", "--split", "train", "--out", d / f"{kind}.npy")
        memory = rote.Lssvm(x, y, kernel="rbf:sigma=2", gamma=10.0, memory=kind, memory_fn="gauss:sigma=0.5", memory_weight=2.0)
        assert (memory.predict(x) == np.load(d / f"{kind}.npy")).all() and (memory.predict(x) == y).all()
    # The iterative solver, from Python as from the CLI.
    cli("lssvm", "fit", "--data", "digits:subset=40", "--kernel", "rbf:sigma=2", "--solver", "cg", "--tol", "1e-10", "--out", d / "cg")
    cli("lssvm", "predict", "--model", d / "cg", "--data", "digits", "--split", "train", "--out", d / "cg.npy")
    sub = rote.dataset("digits:subset=40")
    xs = sub["x"].astype(np.float64).reshape(len(sub["x"]), -1) / sub["x"].max()
    cg = rote.Lssvm(xs, sub["y"].astype(np.int64), kernel="rbf:sigma=2", solver="cg", tol=1e-10)
    assert cg.solver["solver"] == "cg" and cg.solver["cg"]["converged"]
    assert (cg.predict(x) == np.load(d / "cg.npy")).all()
    with pytest.raises(rote.RoteError, match="--memory-fn gauss"):
        rote.Lssvm(x, y, memory="gauss:sigma=0.5")
    # Cross-validation over σ, γ and the memory: the CLI's grid, cell for cell.
    grid = ["--cv", "3", "--grid-sigma", "1,2", "--grid-gamma", "1,10", "--grid-memory-weight", "0.5,2", "--grid-memory-width", "0.5,1"]
    want = json.loads(cli("lssvm", "fit", "--data", "digits:subset=40", "--kernel", "rbf:sigma=2", "--memory", "wimm", "--memory-fn", "gauss:sigma=1", *grid, "--out", d / "cv", "--json"))["cv"]
    got = rote.Lssvm.cross_validate(xs, sub["y"].astype(np.int64), folds=3, sigmas=[1.0, 2.0], gammas=[1.0, 10.0], memory="wimm", memory_fn="gauss:sigma=1", memory_weights=[0.5, 2.0], memory_widths=[0.5, 1.0])
    assert got == want and len(got) == 16
    with pytest.raises(rote.RoteError, match="need a memory"):
        rote.Lssvm.cross_validate(xs, sub["y"].astype(np.int64), memory_weights=[1.0])


def test_contiguous_and_memory_mapped_inputs_are_read_in_place(tmp_path):
    from rote import _rote

    x = np.arange(4000, dtype=np.float32).reshape(100, 40)
    assert _rote._input_address(x) == x.ctypes.data
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert _rote._input_address(mapped) == mapped.ctypes.data
    with pytest.raises(rote.RoteError, match="C-contiguous"):
        _rote._input_address(x[:, ::2])
