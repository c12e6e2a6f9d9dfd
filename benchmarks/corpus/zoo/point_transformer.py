"""Point Transformer (Zhao et al. 2021) shape classifier on synthetic point clouds.

Shapes (5 classes, 64 points each): sphere, cube surface, torus, open cylinder, cone surface;
every cloud gets anisotropic jitter of its proportions, a random rotation, a random scale and
Gaussian noise, then is centred.

Network: a per-point input MLP (Linear + BatchNorm1d + ReLU) lifts xyz to features; two Point
Transformer blocks each find the k = 8 nearest neighbours of every point in the forward pass and
apply vector attention: per-channel weights softmax_j(gamma(phi(x_i) - psi(x_j) + delta_ij))
over the neighbour axis of a (batch, points, k, channels) tensor, with delta_ij = theta(p_i -
p_j) a learned position encoding (an MLP with LayerNorm), and output sum_j w_ij * (alpha(x_j) +
delta_ij); linear in / out projections around the attention, residual connection. A max pool
over the points and an MLP head (BatchNorm1d) give the class logits. F.cross_entropy; SGD
(momentum 0.9, weight decay) with a MultiStepLR schedule.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

N_POINTS = 64
K = 8
CLASSES = ("sphere", "cube", "torus", "cylinder", "cone")


# ------------------------------------------------------------------ shapes
def random_rotation(n, g):
    q = torch.randn(n, 4, generator=g)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def sample_shape(label: int, g: torch.Generator) -> torch.Tensor:
    n = N_POINTS
    u = torch.rand(n, generator=g)
    v = torch.rand(n, generator=g)
    if label == 0:  # sphere
        p = torch.randn(n, 3, generator=g)
        p = p / p.norm(dim=1, keepdim=True)
    elif label == 1:  # cube surface
        p = torch.rand(n, 3, generator=g) * 2 - 1
        face = torch.randint(0, 3, (n,), generator=g)
        sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
        p[torch.arange(n), face] = sign
    elif label == 2:  # torus
        a, b = 2 * math.pi * u, 2 * math.pi * v
        r = 0.3 + 0.15 * torch.rand(1, generator=g)
        p = torch.stack([(1 + r * b.cos()) * a.cos(), (1 + r * b.cos()) * a.sin(), r * b.sin()],
                        1) / 1.3
    elif label == 3:  # open cylinder
        a = 2 * math.pi * u
        p = torch.stack([a.cos(), a.sin(), 2 * v - 1], 1)
    else:  # cone surface
        a = 2 * math.pi * u
        h = v.sqrt()
        p = torch.stack([h * a.cos(), h * a.sin(), 1 - 2 * h], 1)
    p = p * (1 + 0.25 * (torch.rand(1, 3, generator=g) - 0.5))  # proportions jitter
    return p


def make_batch(n: int, g: torch.Generator):
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    clouds = torch.stack([sample_shape(int(c), g) for c in labels])
    clouds = clouds @ random_rotation(n, g).transpose(1, 2)
    clouds = clouds * (0.6 + 0.8 * torch.rand(n, 1, 1, generator=g))
    clouds = clouds + 0.06 * torch.randn(clouds.shape, generator=g)
    clouds = clouds - clouds.mean(dim=1, keepdim=True)
    return clouds, labels


# ------------------------------------------------------------------ model
def knn(pos, k):
    """(B, N, k) indices of each point's k nearest neighbours (itself included)."""
    d = torch.cdist(pos, pos)
    return d.topk(k, dim=-1, largest=False).indices


def gather_neighbours(x, idx):
    """x (B, N, C), idx (B, N, k) -> (B, N, k, C)."""
    b, n, k = idx.shape
    flat = idx.reshape(b, n * k, 1).expand(-1, -1, x.size(-1))
    return x.gather(1, flat).reshape(b, n, k, x.size(-1))


class VectorAttention(nn.Module):
    def __init__(self, dim, k):
        super().__init__()
        self.k = k
        self.phi = nn.Linear(dim, dim)
        self.psi = nn.Linear(dim, dim)
        self.alpha = nn.Linear(dim, dim)
        self.theta = nn.Sequential(nn.Linear(3, dim), nn.LayerNorm(dim), nn.ReLU(),
                                   nn.Linear(dim, dim))
        self.gamma = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(),
                                   nn.Linear(dim, dim))

    def forward(self, x, pos):
        idx = knn(pos, self.k)
        rel = pos.unsqueeze(2) - gather_neighbours(pos, idx)  # p_i - p_j
        delta = self.theta(rel)
        q = self.phi(x).unsqueeze(2)
        key = gather_neighbours(self.psi(x), idx)
        val = gather_neighbours(self.alpha(x), idx)
        w = self.gamma(q - key + delta)
        w = F.softmax(w, dim=2)  # over the neighbours, separately per channel
        return (w * (val + delta)).sum(dim=2)


class PointTransformerBlock(nn.Module):
    def __init__(self, dim, k):
        super().__init__()
        self.linear_in = nn.Linear(dim, dim)
        self.attn = VectorAttention(dim, k)
        self.linear_out = nn.Linear(dim, dim)

    def forward(self, x, pos):
        return x + self.linear_out(self.attn(self.linear_in(x), pos))


class PointTransformerCls(nn.Module):
    def __init__(self, dim=32, n_classes=5, k=K):
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.embed_bn = nn.BatchNorm1d(dim)
        self.blocks = nn.ModuleList([PointTransformerBlock(dim, k) for _ in range(2)])
        self.head = nn.Sequential(nn.Linear(dim, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                  nn.Linear(64, n_classes))

    def forward(self, pos):
        x = self.embed(pos)
        x = F.relu(self.embed_bn(x.transpose(1, 2)).transpose(1, 2))
        for block in self.blocks:
            x = block(x, pos)
        return self.head(x.max(dim=1).values)


# ------------------------------------------------------------------ training
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=160)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 17)
    val_x, val_y = make_batch(200, gen)

    net = PointTransformerCls()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    milestones = [int(args.steps * 0.6), int(args.steps * 0.85)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.3)

    curve = []
    for it in range(args.steps):
        net.train()
        x, y = make_batch(24, gen)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        curve.append(loss.item())
        if it % 20 == 0:
            print(f"it {it:3d} | ce {curve[-1]:.4f} | lr {opt.param_groups[0]['lr']:.4f}")

    net.eval()
    with torch.no_grad():
        logits = net(val_x)
        val_loss = F.cross_entropy(logits, val_y).item()
        acc = (logits.argmax(1) == val_y).float().mean().item()
    print(f"val ce {val_loss:.4f} | val acc {acc:.3f}")

    tail = curve[-max(1, len(curve) // 10):]
    fmt = lambda v: v if math.isfinite(v) else "nan"  # noqa: E731
    print("CORPUS_RESULT " + json.dumps({"first_loss": fmt(curve[0]),
                                         "train_loss": fmt(sum(tail) / len(tail)),
                                         "val_loss": fmt(val_loss)}))


if __name__ == "__main__":
    main()
