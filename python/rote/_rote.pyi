"""Type stubs of the native module (see rote/__init__.py for the overview)."""

from os import PathLike
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

class RoteError(Exception): ...

Path = Union[str, PathLike]
Tokens = Union[Sequence[int], npt.NDArray[np.integer]]

def default_device() -> str: ...
def load_state_dict(path: Path) -> dict[str, npt.NDArray[np.float32]]: ...
def curvature_scores(
    model: str,
    state_dict: dict[str, npt.ArrayLike],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    estimator: str = "exact",
    statistic: str = "paper",
    probes: int = 10,
    h: float = 1e-3,
    seed: int = 0,
    batch: int = 256,
    first_index: int = 0,
    device: str = "auto",
    progress: Optional[Callable[[int, int], Any]] = None,
) -> dict[str, Any]: ...
def knn(
    train: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int = 1, *, metric: str = "l2", device: str = "auto"
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]: ...
def text_import(paths: Sequence[Path], out: Path, *, tokenizer: str = "bytes", normalized: bool = True) -> dict[str, Any]: ...
def text_build_index(
    corpus: Path,
    *,
    kind: str = "bloom",
    n: int = 50,
    fp: float = 1e-3,
    layout: str = "blocked",
    capacity: Optional[int] = None,
    out: Optional[Path] = None,
    normalized: bool = False,
    device: str = "auto",
) -> list[dict[str, Any]]: ...
def text_normalize(text: str) -> str: ...

class Index:
    def __init__(self, path: Path, corpus: Optional[Path] = None) -> None: ...
    @property
    def kind(self) -> str: ...
    @property
    def n(self) -> Optional[int]: ...
    @property
    def corpus(self) -> str: ...
    def info(self, n: Optional[int] = None) -> dict[str, Any]: ...
    def hits(self, tokens: Tokens, n: Optional[int] = None) -> npt.NDArray[np.bool_]: ...
    def contains(self, gram: Tokens) -> bool: ...
    def count(self, pattern: Tokens) -> int: ...
    def longest_match(self, tokens: Tokens) -> Optional[dict[str, int]]: ...
    def memfree_choose(self, context: Tokens, candidates: Tokens, n: Optional[int] = None) -> Optional[int]: ...
    def demo(
        self, passages: int = 200, length: int = 300, n: Optional[int] = None, normalized_index: Optional["Index"] = None, normalized_n: Optional[int] = None, seed: int = 0
    ) -> list[dict[str, Any]]: ...
    def scan(
        self, generations: list[dict[str, Any]], n: Optional[int] = None, normalized_index: Optional["Index"] = None, normalized_n: Optional[int] = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...

def optimal_denoise(train: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], sigma: float) -> npt.NDArray[np.float32]: ...
def memorization_ratio(
    train: npt.NDArray[np.float32], generated: npt.NDArray[np.float32], *, threshold: float = 1 / 3, device: str = "auto"
) -> dict[str, Any]: ...

class Lssvm:
    def __init__(
        self,
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.int64],
        *,
        kernel: str = "rbf:sigma=1",
        gamma: float = 10.0,
        memory: Optional[str] = None,
        memory_fn: str = "identity",
        memory_weight: float = 1.0,
        solver: str = "auto",
        tol: float = 1e-6,
        max_iter: int = 1000,
        preconditioner_rank: int = 200,
    ) -> None: ...
    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]: ...
    @staticmethod
    def cross_validate(
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.int64],
        *,
        folds: int = 5,
        kernel: str = "rbf:sigma=1",
        sigmas: Optional[list[float]] = None,
        gamma: float = 10.0,
        gammas: Optional[list[float]] = None,
        memory: Optional[str] = None,
        memory_fn: str = "identity",
        memory_weight: float = 1.0,
        memory_weights: Optional[list[float]] = None,
        memory_widths: Optional[list[float]] = None,
        seed: int = 0,
    ) -> list[dict[str, Any]]: ...
    @property
    def solver(self) -> dict[str, Any]: ...

Progress = Optional[Callable[[int, int], Any]]

def dataset(spec: str) -> dict[str, Any]: ...
def save_dataset(
    out: Path, x: npt.ArrayLike, y: npt.NDArray[np.int64], *, x_test: Optional[npt.ArrayLike] = None, y_test: Optional[npt.NDArray[np.int64]] = None, name: Optional[str] = None
) -> str: ...

class ThresholdNetwork:
    @staticmethod
    def load(path: Path) -> "ThresholdNetwork": ...
    def save(self, path: Path) -> None: ...
    def predict(self, x: npt.ArrayLike, *, device: str = "auto") -> npt.NDArray[np.int64]: ...
    def accuracy(self, data: str, *, device: str = "auto") -> dict[str, Any]: ...
    @property
    def first_width(self) -> int: ...
    @property
    def second_widths(self) -> dict[int, int]: ...
    @property
    def parameters(self) -> int: ...

def construct(
    data: str,
    width: int,
    max_bias: float,
    *,
    activation: str = "threshold",
    positive_class: Optional[int] = None,
    one_vs_rest: bool = False,
    seed: int = 0,
    scale: bool = True,
    device: str = "auto",
) -> tuple[ThresholdNetwork, dict[str, Any]]: ...
def train(
    data: Optional[str],
    model: Optional[str],
    out: Path,
    *,
    epochs: int = 20,
    batch: int = 128,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "step",
    label_noise: float = 0.0,
    duplicate_conflicts: int = 0,
    seed: int = 0,
    augment: str = "",
    normalize: str = "auto",
    resume: bool = False,
    device: str = "auto",
    progress: Progress = None,
) -> dict[str, Any]: ...
def curvature(
    run: Optional[Path] = None,
    *,
    weights: Optional[str] = None,
    model: Optional[str] = None,
    normalize: Optional[str] = None,
    data: Optional[str] = None,
    checkpoints: Optional[str] = None,
    every: int = 1,
    estimator: Optional[str] = None,
    statistic: str = "paper",
    probes: int = 10,
    h: float = 1e-3,
    seed: int = 0,
    batch: int = 256,
    shard: str = "0/1",
    allow_incomplete: bool = False,
    out: Optional[Path] = None,
    device: str = "auto",
    progress: Progress = None,
) -> dict[str, Any]: ...
def sample(
    *,
    data: Optional[str] = None,
    run: Optional[Path] = None,
    samples: int = 1000,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    seed: int = 0,
    subset: Optional[int] = None,
    range: str = "auto",
    shard: str = "0/1",
    device: str = "auto",
    progress: Progress = None,
) -> npt.NDArray[np.float32]: ...
def quantize(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]: ...
def pool_train(
    data: str,
    model: str,
    out: Path,
    *,
    models: int = 16,
    keep: float = 0.5,
    mirror: bool = True,
    shard: str = "0/1",
    save_models: bool = False,
    epochs: int = 20,
    batch: int = 128,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "step",
    label_noise: float = 0.0,
    duplicate_conflicts: int = 0,
    seed: int = 0,
    augment: str = "",
    normalize: str = "auto",
    progress: Progress = None,
) -> dict[str, Any]: ...
def memorization(pool: Path) -> dict[str, Any]: ...
def mia(
    pool: Path,
    *,
    attack: str = "lira-online",
    targets: str = "leave-one-out",
    shadows: Optional[int] = None,
    fixed_variance: bool = False,
    centre: str = "median",
    gamma: float = 2.0,
    offline_a: Optional[float] = None,
    population: int = 0,
) -> dict[str, Any]: ...
def emm(
    data: str,
    sizes: Sequence[int],
    out: Path,
    *,
    threshold: float = 0.9,
    refine: int = 0,
    labels: str = "none",
    model: str = "resmlp:width=256,blocks=3",
    steps: int = 4000,
    batch: int = 128,
    lr: float = 1e-3,
    ema: float = 0.99,
    seed: int = 0,
    samples: int = 1000,
    ratio_threshold: float = 1 / 3,
    device: str = "auto",
) -> dict[str, Any]: ...
def knn_classify(
    keys: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    queries: npt.NDArray[np.float32],
    *,
    probs: Optional[npt.NDArray[np.float64]] = None,
    k: int = 16,
    lambda_: float = 0.2,
    temperature: float = 1.0,
    metric: str = "ip",
    combine: str = "standard",
    device: str = "auto",
) -> dict[str, Any]: ...
def train_denoiser(
    data: str,
    out: Path,
    *,
    subset: Optional[int] = None,
    labels: str = "none",
    model: str = "resmlp:width=256,blocks=3",
    steps: int = 4000,
    batch: int = 128,
    lr: float = 2e-4,
    ema: float = 0.999,
    seed: int = 0,
    checkpoint_every: int = 0,
    range: str = "auto",
    device: str = "auto",
    resume: bool = False,
    progress: Progress = None,
) -> dict[str, Any]: ...
def choi(
    pool: Path,
    *,
    select: str = "top:10%",
    shadows: Optional[Sequence[int]] = None,
    targets: str = "leave-one-out",
    attack: str = "lira-online",
    fixed_variance: bool = False,
    centre: str = "median",
    gamma: float = 2.0,
    offline_a: Optional[float] = None,
    population: int = 0,
) -> dict[str, Any]: ...
def evaluate(model: str, weights: str, data: str, *, normalize: str = "none", scale: bool = True) -> dict[str, Any]: ...
