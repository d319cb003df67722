"""rote: measuring and constructing memorization in neural networks, from Python.

The same engine as the `rote` command line (the CLI and this package call the same
library functions): NumPy arrays in and out, contiguous inputs read without copies,
the GIL released while rote computes, and rote's errors raised as `RoteError` with
the messages the CLI prints. `device="auto"` uses the GPU when one is usable.

- `dataset(spec)`, `save_dataset(out, x, y, …)`: datasets as arrays, and arrays as a
  dataset directory every `data=` argument (and the CLI's `--data`) can name.
- `construct(data, width, max_bias, …)` → (`ThresholdNetwork`, report): the
  interpolating threshold networks; `ThresholdNetwork.load/save/predict/accuracy`.
- `train(data, model, out, …)`: a training run directory, byte for byte `rote train`'s;
  `evaluate(model, weights, data)`: each checkpoint's loss and accuracy (`rote eval`).
- `curvature(run, …)`: per-sample input curvature of a run's checkpoints (or of
  `weights=` trained elsewhere), averaged as `rote curvature` does; `shard="I/N"` or
  `"auto"` (Slurm) for a part of the samples.
- `curvature_scores(model, state_dict, x, y, …)`: per-sample input curvature
  (the curvature paper's memorization score), for MLPs and CNNs (rote's model specs),
  from weights in memory.
- `sample(data=… | run=…, …)`, `quantize(x)`: EDM sampling from the optimal or a
  trained denoiser (`train_denoiser(data, out, …)`); `emm(data, sizes, out, …)`:
  effective model memorization.
- `pool_train(data, model, out, …)`, `memorization(pool)`, `mia(pool, attack=…)`,
  `choi(pool, select=…)`: shadow-model pools, Feldman–Zhang memorization, LiRA/RMIA
  membership inference, Choi et al.'s targeting of memorized samples.
- `knn(train, queries, k, metric=…)`: exact nearest neighbours.
- `optimal_denoise(train, queries, sigma)`, `memorization_ratio(train, generated)`:
  the diffusion study's exact denoiser and copy detection.
- `Lssvm(x, y, kernel=…, gamma=…).predict(q)`: the least-squares SVM;
  `knn_classify(keys, labels, queries, probs=…)`: retrieval-augmented prediction.
- `load_state_dict(path)`: a safetensors checkpoint as a dict of arrays.
- `rote.text`: corpora, n-gram Bloom filters and suffix arrays, scans, MemFree.
- `rote.torch`: specs and state dicts from PyTorch modules, and an in-loop tracker.
- `rote.ray` (imported on its own: `import rote.ray`): curvature, sampling and kNN split
  over a Ray cluster and merged, equal to one process's result.
"""

from ._rote import (  # noqa: F401
    RoteError,
    ThresholdNetwork,
    choi,
    __version__,
    construct,
    curvature,
    curvature_scores,
    dataset,
    default_device,
    emm,
    evaluate,
    Lssvm,
    knn,
    knn_classify,
    load_state_dict,
    memorization,
    memorization_ratio,
    mia,
    optimal_denoise,
    pool_train,
    quantize,
    sample,
    save_dataset,
    train,
    train_denoiser,
)
from . import text  # noqa: F401
from . import torch  # noqa: F401  (torch itself is imported only when a module is given)

__all__ = [
    "Lssvm",
    "RoteError",
    "ThresholdNetwork",
    "__version__",
    "choi",
    "construct",
    "curvature",
    "curvature_scores",
    "dataset",
    "default_device",
    "emm",
    "evaluate",
    "knn",
    "knn_classify",
    "load_state_dict",
    "memorization",
    "memorization_ratio",
    "mia",
    "optimal_denoise",
    "pool_train",
    "quantize",
    "sample",
    "save_dataset",
    "train",
    "train_denoiser",
    "text",
    "torch",
]
