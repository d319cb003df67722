"""rote.torch against real PyTorch modules (torch is too large for the test command: run
by scripts/python-torch-check.sh, which installs it into .tools/torch).

Trains an nn.Sequential ReLU MLP for three epochs in a plain PyTorch loop with the
tracker scoring the live module every epoch, then checks the spec rote reads from the
module and rote's exact (probe-free) tr(H) and tr(H²) against torch.autograd's input
Hessian of the per-sample cross-entropy for eight samples. Then the same for a CIFAR
ResNet-18 in kuangliu's layout (width 8, BatchNorm statistics from a few training-mode
passes, scored in evaluation mode): for a ReLU network the input Hessian is JᵀAJ, with
J torch.autograd's Jacobian of the logits and A = diag(p) − ppᵀ.
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


class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))

    def forward(self, v):
        out = torch.relu(self.bn1(self.conv1(v)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(v))


class ResNet(torch.nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        c, stages = width, []
        for i, stride in enumerate([1, 2, 2, 2]):
            out = width * 2**i
            stages.append(torch.nn.Sequential(BasicBlock(c, out, stride), BasicBlock(out, out, 1)))
            c = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = torch.nn.Linear(c, classes)

    def forward(self, v):
        out = torch.relu(self.bn1(self.conv1(v)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.nn.functional.avg_pool2d(out, 4)
        return self.linear(out.flatten(1))


net = ResNet(8, 10)
xc = rng.normal(size=(64, 3, 32, 32)).astype(np.float32)
yc = rng.integers(0, 10, size=64).astype(np.int64)
with torch.no_grad():
    net.train()
    for _ in range(3):
        net(torch.from_numpy(xc))  # BatchNorm running statistics away from their start
net.eval()
spec = rote.torch.spec_of(net)
assert spec == "resnet18-cifar:classes=10,width=8", spec
got = rote.torch.scores(net, xc[:4], yc[:4], estimator="exact", device="cpu")
worst = 0.0
for i in range(4):
    xi = torch.from_numpy(xc[i:i + 1])
    jac = torch.autograd.functional.jacobian(lambda v: net(v)[0], xi).reshape(10, -1).double()
    p = torch.softmax(net(xi)[0].double(), 0)
    a = torch.diag(p) - torch.outer(p, p)
    g = jac @ jac.T
    tr, tr2 = (a @ g).trace().item(), (a @ g @ a @ g).trace().item()
    worst = max(worst, abs(got["trace"][i] - tr) / abs(tr), abs(got["score"][i] - tr2) / abs(tr2))
print(f"resnet18-cifar (width 8) from the torch module, exact estimator against torch's JᵀAJ, 4 samples: worst relative error {worst:.2e}")
assert worst < 1e-3, worst
print("torch check: PASS")
