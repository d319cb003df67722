"""rote inside a PyTorch training loop.

- `spec_of(module)`: rote's model spec of an `nn.Sequential(Linear, act, Linear, …)`
  (activations ReLU, GELU, Tanh or Softplus, one kind throughout), of torchvision's
  `resnet18` ("resnet18:classes=C") and of the CIFAR ResNet-18 in kuangliu's layout
  the curvature paper trains ("resnet18-cifar:classes=C,width=W"). Score ResNets in
  evaluation mode (rote folds BatchNorm's running statistics).
- `state_dict_of(module)`: its weights as NumPy arrays, under the names rote reads.
- `scores(module, x, y, **kw)`: `rote.curvature_scores` of the live module.
- `CurvatureTracker(x, y, every=K)`: call `.step(epoch, module)` after each epoch; every
  K-th epoch it scores the module's current weights (no checkpoint files) and keeps the
  running mean over the epochs scored — the curvature paper's memorization score.

Weights and inputs reach rote as host NumPy arrays: CUDA tensors are copied to the host
(`.detach().cpu()`) once per scoring; rote then runs on `device`. Reading CUDA tensors in
place through DLPack is not done yet. torch is imported lazily, only by the functions
that take a module; the tracker also accepts a state dict of arrays.
"""

import numpy as np

from ._rote import curvature_scores

_ACTIVATIONS = {"ReLU": "relu", "GELU": "gelu", "Tanh": "tanh", "Softplus": "softplus"}


def _resnet_spec(module):
    """The spec of a ResNet-18 in torchvision's or kuangliu's layout, or None."""
    stages = [getattr(module, f"layer{i}", None) for i in range(1, 5)]
    conv1 = getattr(module, "conv1", None)
    if conv1 is None or any(s is None for s in stages) or getattr(module, "layer5", None) is not None:
        return None
    blocks = [list(s.children()) for s in stages]
    if [len(b) for b in blocks] != [2, 2, 2, 2] or any(type(b).__name__ != "BasicBlock" for s in blocks for b in s):
        raise ValueError("rote reads ResNet-18 (BasicBlocks [2, 2, 2, 2]); this ResNet has other stages")
    width = conv1.out_channels
    fc, linear = getattr(module, "fc", None), getattr(module, "linear", None)
    if fc is not None and tuple(conv1.kernel_size) == (7, 7) and hasattr(module, "maxpool"):
        if width != 64:
            raise ValueError(f"torchvision's resnet18 has 64 stem channels, this one {width}")
        return f"resnet18:classes={fc.out_features}"
    if linear is not None and tuple(conv1.kernel_size) == (3, 3) and tuple(conv1.stride) == (1, 1):
        return f"resnet18-cifar:classes={linear.out_features},width={width}"
    raise ValueError("a ResNet-18 rote does not know: expected torchvision's (7×7/2 stem, maxpool, fc) or kuangliu's (3×3 stem, linear)")


def spec_of(module):
    """rote's spec, e.g. "mlp:784-512-10,act=relu", of an nn.Sequential of Linear layers
    with one kind of activation between them, or "resnet18-cifar:classes=10,width=64" /
    "resnet18:classes=1000" of a ResNet-18 in kuangliu's or torchvision's layout."""
    resnet = _resnet_spec(module)
    if resnet is not None:
        return resnet
    layers = list(module.children())
    sizes, acts = [], set()
    for i, layer in enumerate(layers):
        name = type(layer).__name__
        if i % 2 == 0:
            if name != "Linear":
                raise ValueError(f"layer {i} is {name}; rote reads nn.Sequential(Linear, activation, Linear, …)")
            if not sizes:
                sizes.append(layer.in_features)
            elif layer.in_features != sizes[-1]:
                raise ValueError(f"layer {i} takes {layer.in_features} features after {sizes[-1]}")
            sizes.append(layer.out_features)
        else:
            if name not in _ACTIVATIONS:
                raise ValueError(f"layer {i} is {name}; rote's MLPs use ReLU, GELU, Tanh or Softplus")
            acts.add(_ACTIVATIONS[name])
    if len(layers) % 2 == 0 or len(acts) > 1:
        raise ValueError("rote reads nn.Sequential(Linear, act, …, Linear) with one activation kind")
    act = acts.pop() if acts else "relu"
    return "mlp:" + "-".join(map(str, sizes)) + f",act={act}"


def state_dict_of(module):
    """The module's weights and BatchNorm statistics as float32 NumPy arrays under
    PyTorch's names (BatchNorm's integer step counters left out)."""
    return {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def _as_numpy(a, dtype):
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=dtype)


def scores(module, x, y, **kw):
    """Per-sample curvature of the live `module` on inputs `x` (prepared as in training)
    and labels `y`; keyword arguments as `rote.curvature_scores`."""
    return curvature_scores(spec_of(module), state_dict_of(module), _as_numpy(x, np.float32), _as_numpy(y, np.int64), **kw)


class CurvatureTracker:
    """Scores every `every`-th epoch and keeps the running mean of the scores.

    `model`: rote's spec (needed when `step` gets state dicts; taken from the module
    otherwise). Other keyword arguments go to `rote.curvature_scores`.
    """

    def __init__(self, x, y, every=1, model=None, **kw):
        if every < 1:
            raise ValueError("every must be at least 1")
        self.x = _as_numpy(x, np.float32)
        self.y = _as_numpy(y, np.int64)
        self.every, self.model, self.kw = every, model, kw
        self.epochs = []
        self._sum = None
        self._trace_sum = None

    def step(self, epoch, module_or_state_dict):
        """After epoch `epoch` (counted from 1): scores it when epoch % every == 0 and
        returns that epoch's scores (else None)."""
        if epoch % self.every != 0:
            return None
        if isinstance(module_or_state_dict, dict):
            if self.model is None:
                raise ValueError("give model= (rote's spec) to track state dicts")
            spec, weights = self.model, module_or_state_dict
        else:
            spec, weights = self.model or spec_of(module_or_state_dict), state_dict_of(module_or_state_dict)
        s = curvature_scores(spec, weights, self.x, self.y, **self.kw)
        score, trace = s["score"].astype(np.float64), s["trace"].astype(np.float64)
        self._sum = score if self._sum is None else self._sum + score
        self._trace_sum = trace if self._trace_sum is None else self._trace_sum + trace
        self.epochs.append(epoch)
        return s

    @property
    def mean(self):
        """The mean score over the epochs scored so far (float32, as `rote curvature`)."""
        if self._sum is None:
            raise ValueError("no epoch scored yet")
        return (self._sum / len(self.epochs)).astype(np.float32)

    @property
    def mean_trace(self):
        if self._trace_sum is None:
            raise ValueError("no epoch scored yet")
        return (self._trace_sum / len(self.epochs)).astype(np.float32)
