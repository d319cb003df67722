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
    def __init__(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64], *, kernel: str = "rbf:sigma=1", gamma: float = 10.0) -> None: ...
    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]: ...
