#!/usr/bin/env python3
"""Baseline: PyTorch's forward pass and SGD training step for rote's CNN specs, on the
same weights and batch as `rote bench cnn`.

Reads a directory written by rote: weights.safetensors (the state dict), x.npy (B, C,
H, W), y.npy (B,) and meta.json ({"model": spec}). Builds the matching PyTorch module
(`build`: the cnn:… tokens as nn.Sequential, resnet18-cifar as the kuangliu layout),
times the evaluation forward pass (no_grad) and one training step (forward in training
mode, cross-entropy, backward, SGD with momentum) as medians of --repeats, writes
logits.npy (evaluation) and prints JSON. torch from PyPI: scripts/bench.sh installs it
into .tools/torch on demand.
"""
import argparse
import json
import re
import struct
import time


def read_safetensors(path):
    import numpy as np
    import torch

    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        dt = {"F32": "<f4", "I64": "<i8", "F16": "<f2"}[e["dtype"]]
        out[name] = torch.from_numpy(np.frombuffer(data[8 + n + a : 8 + n + b], dtype=dt).reshape(e["shape"]).copy())
    return out


def resnet18_cifar(channels, classes, width, act="relu"):
    """kuangliu/pytorch-cifar's ResNet-18 (ALGORITHMS.md section 4); its
    avg_pool2d(4) as the adaptive average pool it equals on 32x32 inputs."""
    import torch.nn as nn
    import torch.nn.functional as F

    sigma = {"relu": F.relu, "gelu": F.gelu, "tanh": "tanh", "softplus": F.softplus}[act]
    if sigma == "tanh":
        import torch

        sigma = torch.tanh

    class BasicBlock(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.shortcut = nn.Sequential()
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            out = sigma(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return sigma(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            c = width
            for stage in range(4):
                out = width << stage
                blocks = []
                for b in range(2):
                    blocks.append(BasicBlock(c, out, 2 if stage > 0 and b == 0 else 1))
                    c = out
                setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            self.linear = nn.Linear(c, classes)

        def forward(self, x):
            out = sigma(self.bn1(self.conv1(x)))
            for stage in range(4):
                out = getattr(self, f"layer{stage + 1}")(out)
            return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    return ResNet()


def cnn(body, channels):
    """rote's cnn:TOKEN-… spec as the nn.Sequential it names (README)."""
    import torch.nn as nn

    tokens = body.split("-")
    mods, c, flat = [], channels, False
    for t, tok in enumerate(tokens):
        m = re.fullmatch(r"c(\d+)(?:k(\d+))?(?:s(\d+))?(?:p(\d+))?", tok)
        if m:
            out, k, s = int(m[1]), int(m[2] or 3), int(m[3] or 1)
            p = int(m[4]) if m[4] is not None else k // 2
            mods.append(nn.Conv2d(c, out, k, stride=s, padding=p, bias=(t + 1 >= len(tokens) or tokens[t + 1] != "bn")))
            c = out
        elif tok == "bn":
            mods.append(nn.BatchNorm2d(c))
        elif tok in ("relu", "gelu", "tanh", "softplus"):
            mods.append({"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus}[tok]())
        elif tok == "gap":
            mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            flat = True
        elif re.fullmatch(r"ap\d+", tok):
            mods.append(nn.AvgPool2d(int(tok[2:])))
        elif re.fullmatch(r"p\d+", tok):
            mods.append(nn.MaxPool2d(int(tok[1:])))
        elif re.fullmatch(r"fc\d+", tok):
            if not flat:
                mods.append(nn.Flatten())
                flat = True
            mods.append(nn.LazyLinear(int(tok[2:])))
        else:
            raise SystemExit(f"unknown token {tok}")
    return nn.Sequential(*mods)


def build(spec, shape):
    import torch

    if spec.startswith("cnn:"):
        model = cnn(spec[4:], shape[0])
        model(torch.zeros(1, *shape))  # sizes the lazy linear layers
        return model
    if spec.startswith("resnet18-cifar"):
        opts = dict(o.split("=") for o in spec.partition(":")[2].split(",") if o)
        return resnet18_cifar(shape[0], int(opts.get("classes", 10)), int(opts.get("width", 64)), opts.get("act", "relu"))
    raise SystemExit(f"no PyTorch baseline for {spec}")


def median(times):
    times = sorted(times)
    return times[len(times) // 2]


def main():
    import numpy as np
    import torch
    import torch.nn.functional as F

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    meta = json.load(open(f"{a.dir}/meta.json"))
    x = torch.from_numpy(np.load(f"{a.dir}/x.npy"))
    y = torch.from_numpy(np.load(f"{a.dir}/y.npy").astype(np.int64))
    model = build(meta["model"], tuple(x.shape[1:]))
    state = {k: v for k, v in read_safetensors(f"{a.dir}/weights.safetensors").items()}
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        np.save(f"{a.dir}/logits.npy", logits.numpy())
        fwd = []
        for _ in range(a.repeats + 1):
            t0 = time.perf_counter()
            model(x)
            fwd.append(time.perf_counter() - t0)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = []
    for _ in range(a.repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        step.append(time.perf_counter() - t0)
    print(json.dumps({"forward_seconds": median(fwd[1:]), "train_seconds": median(step[1:]), "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
