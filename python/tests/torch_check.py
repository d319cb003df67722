"""rote.torch against real PyTorch modules (torch is too large for the test command: run
by scripts/python-torch-check.sh, which installs it into .tools/torch).

Trains an nn.Sequential ReLU MLP for three epochs in a plain PyTorch loop with the
tracker scoring the live module every epoch, then checks the spec rote reads from the
module and rote's exact (probe-free) tr(H) and tr(H²) against torch.autograd's input
Hessian of the per-sample cross-entropy for eight samples.
"""

import numpy as np
import torch

import rote

torch.manual_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 20)).astype(np.float32)
y = (x[:, :3].sum(1) > 0).astype(np.int64) + 2 * (x[:, 3] > 0)
model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
tracker = rote.torch.CurvatureTracker(x, y, every=1, estimator="hutchinson", probes=64, device="cpu")
xt, yt = torch.from_numpy(x), torch.from_numpy(y)
for epoch in range(1, 4):
    for i in range(0, len(x), 32):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt[i:i + 32]), yt[i:i + 32])
        loss.backward()
        opt.step()
    s = tracker.step(epoch, model)
    print(f"epoch {epoch}: loss {loss.item():.4f}, mean score {s['score'].mean():.6g}, mean trace {s['trace'].mean():.6g}")

spec = rote.torch.spec_of(model)
assert spec == "mlp:20-32-4,act=relu", spec
direct = rote.curvature_scores(spec, rote.torch.state_dict_of(model), x, y, estimator="exact", device="cpu")

# tr(H) and tr(H²) of the per-sample loss's input Hessian, exactly, by autograd (ReLU:
# rote's exact estimator is probe-free, JᵀAJ).
worst = 0.0
for i in range(8):
    xi = xt[i:i + 1].clone().requires_grad_(True)
    f = lambda v: torch.nn.functional.cross_entropy(model(v.view(1, -1)), yt[i:i + 1])
    h = torch.autograd.functional.hessian(f, xi.view(-1)).double()
    tr, tr2 = h.trace().item(), (h @ h).trace().item()
    worst = max(worst, abs(direct["trace"][i] - tr) / max(abs(tr), 1e-12), abs(direct["score"][i] - tr2) / max(abs(tr2), 1e-12))
print(f"exact estimator against torch.autograd's Hessian, 8 samples: worst relative error {worst:.2e}")
assert worst < 1e-3, worst
print(f"tracker: {len(tracker.epochs)} epochs, mean score {tracker.mean.mean():.6g}")
print("torch check: PASS")
