#!/usr/bin/env python3
"""Baseline: the U-Net denoiser of rote's `unet:` spec in PyTorch, trained with the same
loss and optimizer as `rote denoise train`, for `rote bench denoise-train --model unet:…`.

The network follows EDM's DDPM++ layout as ALGORITHMS.md section 3 and
src/diffusion/unet.rs describe it (written out here from that description): positional
or Fourier embedding of c_noise, an optional label embedding, a two-layer mapping
network, UNetBlocks (GroupNorm with min(32, C/4) groups and eps 1e-6, SiLU, 3x3
convolutions, the embedding added per channel, dropout, 1x1 skip projections, nearest
(or with resample=bilinear, bilinear) up-sampling and 2x2 average pooling, self-attention with EDM's qkv layout), skip
concatenation in the decoder, and the final GroupNorm, SiLU, 3x3 convolution. State-dict
names are SongUNet's (enc.8x8_conv.weight, dec.4x4_in0.qkv.bias, map_noise.freqs, ...),
so rote's checkpoints load with load_state_dict.

bench: reads --dir/y.npy (N, C, H, W training samples in model space), trains for
--steps Adam steps of --batch with EDM's sigma distribution and preconditioning (as
src/diffusion/train.rs), an EMA of the weights, and prints JSON with the seconds of the
timed steps (after --warmup steps). torch from PyPI: scripts/bench.sh installs it into
.tools/torch on demand.
"""
import argparse
import json
import math
import time


def parse_spec(spec):
    opts = {"channels": 16, "mult": [1, 2, 2], "blocks": 1, "attn": None, "heads": 1, "dropout": 0.0, "embed": "positional", "resample": "nearest"}
    body = spec.split(":", 1)[1] if ":" in spec else ""
    if body == "ddpmpp-cifar10":
        return dict(opts, channels=128, mult=[2, 2, 2], blocks=4, attn=[16], dropout=0.13)
    for kv in filter(None, body.split(",")):
        k, v = kv.split("=")
        if k in ("mult", "attn"):
            opts[k] = [int(t) for t in v.split("-")]
        elif k == "dropout":
            opts[k] = float(v)
        elif k in ("embed", "resample"):
            opts[k] = v
        else:
            opts[k] = int(v)
    return opts


def build(spec, shape, classes=0):
    """The U-Net of `spec` (a rote unet: string) for samples of shape (C, H, W)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    o = parse_spec(spec)

    def norm(c):
        return nn.GroupNorm(max(1, min(32, c // 4)), c, eps=1e-6)

    class Block(nn.Module):
        def __init__(self, cin, cout, emb, up=False, down=False, attention=False):
            super().__init__()
            self.up, self.down = up, down
            self.heads = o["heads"] if attention else 0
            self.norm0 = norm(cin)
            self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
            self.affine = nn.Linear(emb, cout)
            self.norm1 = norm(cout)
            self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if (cin != cout or up or down) else None
            if attention:
                self.norm2 = norm(cout)
                self.qkv = nn.Conv2d(cout, 3 * cout, 1)
                self.proj = nn.Conv2d(cout, cout, 1)

        def resample(self, x):
            if self.up:
                if o["resample"] == "bilinear":
                    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
                return F.interpolate(x, scale_factor=2, mode="nearest")
            if self.down:
                return F.avg_pool2d(x, 2)
            return x

        def forward(self, x, emb):
            h = self.conv0(self.resample(F.silu(self.norm0(x))))
            h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
            h = self.conv1(F.dropout(h, p=o["dropout"], training=self.training))
            skip = self.skip(self.resample(x)) if self.skip is not None else x
            x = (h + skip) * math.sqrt(0.5)
            if self.heads:
                n, c, hh, ww = x.shape
                q, k, v = self.qkv(self.norm2(x)).reshape(n * self.heads, c // self.heads, 3, hh * ww).unbind(2)
                w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(q.shape[1])).softmax(dim=2)
                a = torch.einsum("nqk,nck->ncq", w, v).reshape(n, c, hh, ww)
                x = (self.proj(a) + x) * math.sqrt(0.5)
            return x

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            c, h, w = shape
            ch, mult, levels = o["channels"], o["mult"], len(o["mult"])
            attn = o["attn"] or [h >> (levels - 1)]
            emb = 4 * ch
            self.ch, self.classes, self.fourier = ch, classes, o["embed"] == "fourier"
            if self.fourier:
                self.map_noise = nn.Module()
                self.map_noise.register_buffer("freqs", torch.randn(ch // 2) * 16)
            self.map_label = nn.Linear(classes, ch) if classes else None
            self.map_layer0 = nn.Linear(ch, emb)
            self.map_layer1 = nn.Linear(emb, emb)
            self.enc, self.dec = nn.ModuleDict(), nn.ModuleDict()
            skips, cout = [], c
            for level, m in enumerate(mult):
                r = f"{h >> level}x{w >> level}"
                if level == 0:
                    self.enc[f"{r}_conv"] = nn.Conv2d(c, ch, 3, padding=1)
                    cout = ch
                else:
                    self.enc[f"{r}_down"] = Block(cout, cout, emb, down=True)
                skips.append(cout)
                for i in range(o["blocks"]):
                    cin, cout = cout, ch * m
                    self.enc[f"{r}_block{i}"] = Block(cin, cout, emb, attention=(h >> level) in attn)
                    skips.append(cout)
            for level in reversed(range(levels)):
                r = f"{h >> level}x{w >> level}"
                if level == levels - 1:
                    self.dec[f"{r}_in0"] = Block(cout, cout, emb, attention=True)
                    self.dec[f"{r}_in1"] = Block(cout, cout, emb)
                else:
                    self.dec[f"{r}_up"] = Block(cout, cout, emb, up=True)
                for i in range(o["blocks"] + 1):
                    cin, cout = cout + skips.pop(), ch * mult[level]
                    self.dec[f"{r}_block{i}"] = Block(cin, cout, emb, attention=(i == o["blocks"] and (h >> level) in attn))
            self.dec[f"{h}x{w}_aux_norm"] = norm(cout)
            self.dec[f"{h}x{w}_aux_conv"] = nn.Conv2d(cout, c, 3, padding=1)

        def forward(self, x, c_noise, labels=None):
            half = self.ch // 2
            if self.fourier:
                freqs = 2 * math.pi * self.map_noise.freqs
            else:
                freqs = (1.0 / 10000) ** (torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
                freqs = freqs.to(x.dtype)
            a = c_noise[:, None] * freqs[None, :]
            e = torch.cat([a.sin(), a.cos()], dim=1)
            if self.classes:
                e = e + self.map_label(F.one_hot(labels, self.classes).to(x.dtype) * math.sqrt(self.classes))
            emb = F.silu(self.map_layer1(F.silu(self.map_layer0(e))))
            skips = []
            for block in self.enc.values():
                x = block(x, emb) if isinstance(block, Block) else block(x)
                skips.append(x)
            for name, block in self.dec.items():
                if name.endswith("aux_norm"):
                    x = block(x)
                elif name.endswith("aux_conv"):
                    x = block(F.silu(x))
                else:
                    if "_block" in name:
                        x = torch.cat([x, skips.pop()], dim=1)
                    x = block(x, emb)
            return x

    return UNet()


def precondition(sigma):
    """EDM's (c_skip, c_out, c_in, c_noise) at sigma, sigma_data = 0.5."""
    s2 = sigma * sigma + 0.25
    return 0.25 / s2, sigma * 0.5 / s2.sqrt(), 1 / s2.sqrt(), sigma.log() / 4


def bench(a):
    import numpy as np
    import torch

    torch.set_num_threads(a.threads or torch.get_num_threads())
    y = torch.from_numpy(np.load(f"{a.dir}/y.npy").astype(np.float32))
    model = build(a.model, tuple(y.shape[1:]))
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(0)
    losses, start = [], None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            start = time.perf_counter()
        idx = torch.randint(0, y.shape[0], (a.batch,), generator=gen)
        sigma = (torch.randn(a.batch, generator=gen) * 1.2 - 1.2).exp()
        c_skip, c_out, c_in, c_noise = precondition(sigma)
        yb = y[idx]
        x = yb + sigma[:, None, None, None] * torch.randn(yb.shape, generator=gen)
        target = (yb - c_skip[:, None, None, None] * x) / c_out[:, None, None, None]
        out = model(c_in[:, None, None, None] * x, c_noise)
        loss = ((out - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(a.ema).add_(p, alpha=1 - a.ema)
        losses.append(loss.item())
    secs = time.perf_counter() - start
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "seconds": secs, "steps": a.steps, "loss_last_100": float(np.mean(losses[-100:]))}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.99)
    ap.add_argument("--threads", type=int, default=0)
    bench(ap.parse_args())


if __name__ == "__main__":
    main()
