"""rote: measuring and constructing memorization in neural networks, from Python.

The same engine as the `rote` command line (the CLI and this package call the same
library functions): NumPy arrays in and out, contiguous inputs read without copies,
the GIL released while rote computes, and rote's errors raised as `RoteError` with
the messages the CLI prints. `device="auto"` uses the GPU when one is usable.

- `curvature_scores(model, state_dict, x, y, …)`: per-sample input curvature
  (the curvature paper's memorization score), for MLPs and CNNs (rote's model specs).
- `knn(train, queries, k, metric=…)`: exact nearest neighbours.
- `optimal_denoise(train, queries, sigma)`, `memorization_ratio(train, generated)`:
  the diffusion study's exact denoiser and copy detection.
- `Lssvm(x, y, kernel=…, gamma=…).predict(q)`: the least-squares SVM.
- `load_state_dict(path)`: a safetensors checkpoint as a dict of arrays.
- `rote.text`: corpora, n-gram Bloom filters and suffix arrays, scans, MemFree.
- `rote.torch`: specs and state dicts from PyTorch modules, and an in-loop tracker.
"""

from ._rote import (  # noqa: F401
    RoteError,
    __version__,
    curvature_scores,
    default_device,
    Lssvm,
    knn,
    load_state_dict,
    memorization_ratio,
    optimal_denoise,
)
from . import text  # noqa: F401
from . import torch  # noqa: F401  (torch itself is imported only when a module is given)

__all__ = [
    "Lssvm",
    "RoteError",
    "__version__",
    "curvature_scores",
    "default_device",
    "knn",
    "load_state_dict",
    "memorization_ratio",
    "optimal_denoise",
    "text",
    "torch",
]
