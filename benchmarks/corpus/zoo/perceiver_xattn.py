"""Perceiver-style classifier of point clouds: find the beacon, name its sector.

A scene is a padded set of 40 to 64 points in the unit square, each with (x, y, brightness).
Every point is dim except one beacon; the label is which of five angular sectors around the
centre holds the beacon. A small learned latent array reads the whole set once through a
hand-written multi-head cross-attention (``torch.einsum`` scores, padding masked with the
dtype's lowest value, ``softmax``), then three pre-norm self-attention blocks built on
``nn.MultiheadAttention(batch_first=True)`` work on the latents alone. SGD with Nesterov
momentum, a cosine-annealed LR, weight decay on the weight matrices only.
"""

import argparse
import json
import math

import torch
from torch import nn

MAX_POINTS, MIN_POINTS = 64, 40
SECTORS = 5
DIM_BRIGHTNESS = 0.6
BEACON_POINTS = 6


def scenes(count, g):
    """Point features (count, MAX_POINTS, 3), padding mask (True = no point), sector labels."""
    n_points = torch.randint(MIN_POINTS, MAX_POINTS + 1, (count,), generator=g)
    xy = torch.rand(count, MAX_POINTS, 2, generator=g) * 2 - 1
    brightness = torch.rand(count, MAX_POINTS, generator=g) * DIM_BRIGHTNESS
    sector = torch.randint(0, SECTORS, (count,), generator=g)
    # the beacon: BEACON_POINTS bright points scattered inside the sector
    width = 2 * math.pi / SECTORS
    angle = (sector[:, None] + torch.rand(count, BEACON_POINTS, generator=g)) * width - math.pi
    radius = 0.3 + 0.7 * torch.rand(count, BEACON_POINTS, generator=g)
    xy[:, :BEACON_POINTS] = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=-1)
    brightness[:, :BEACON_POINTS] = 1.0
    points = torch.cat([xy, brightness[..., None]], dim=-1)
    # shuffle the valid part only (the beacon points, first, are always valid); padding at the end
    n_valid = n_points[:, None]
    keys = torch.rand(count, MAX_POINTS, generator=g).masked_fill(
        torch.arange(MAX_POINTS)[None, :] >= n_valid, 2.0)
    points = points.gather(1, keys.argsort(dim=1)[..., None].expand(-1, -1, 3))
    padding = torch.arange(MAX_POINTS)[None, :] >= n_valid
    return points.masked_fill(padding[..., None], 0.0), padding, sector


class FourierPoints(nn.Module):
    """(x, y, b) -> [b, x, y, sin/cos of pi*k*x and pi*k*y] projected to ``dim``."""

    def __init__(self, dim, bands=2):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, bands + 1).float())
        self.proj = nn.Linear(3 + 4 * bands, dim)

    def forward(self, points):
        xy = points[..., :2]
        waves = xy[..., None] * self.freqs
        feats = [points, waves.sin().flatten(-2), waves.cos().flatten(-2)]
        return self.proj(torch.cat(feats, dim=-1))


class CrossAttention(nn.Module):
    """Latents (queries) attend to the input set (keys/values); written out by hand."""

    def __init__(self, latent_dim, input_dim, heads=4, head_dim=16):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.latent_norm = nn.LayerNorm(latent_dim)
        self.input_norm = nn.LayerNorm(input_dim)
        self.to_q = nn.Linear(latent_dim, heads * head_dim, bias=False)
        self.to_kv = nn.Linear(input_dim, 2 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, latent_dim)

    def forward(self, latents, inputs, padding):
        b, m, _ = latents.shape
        n = inputs.shape[1]
        q = self.to_q(self.latent_norm(latents)).view(b, m, self.heads, self.head_dim)
        kv = self.to_kv(self.input_norm(inputs)).view(b, n, 2, self.heads, self.head_dim)
        k, v = kv.unbind(2)
        scores = torch.einsum("bmhd,bnhd->bhmn", q, k) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(padding[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        mixed = torch.einsum("bhmn,bnhd->bmhd", weights, v).reshape(b, m, -1)
        return latents + self.to_out(mixed)


class LatentBlock(nn.Module):
    def __init__(self, dim, heads=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class Perceiver(nn.Module):
    def __init__(self, num_latents=8, dim=48, depth=3, classes=SECTORS):
        super().__init__()
        self.embed = FourierPoints(dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.2)
        self.read = CrossAttention(dim, dim)
        self.blocks = nn.ModuleList(LatentBlock(dim) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, points, padding):
        x = self.read(self.latents.expand(points.shape[0], -1, -1), self.embed(points), padding)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.final_norm(x).mean(dim=1))


def decay_groups(model, weight_decay):
    """Weight decay on weight matrices; none on norms, biases (1-D parameters)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}]


def main():
    cli = argparse.ArgumentParser(description="Perceiver-style beacon sector classifier")
    cli.add_argument("--seed", type=int, default=0)
    cli.add_argument("--steps", type=int, default=150)
    cli.add_argument("--batch", type=int, default=32)
    cli.add_argument("--lr", type=float, default=0.03)
    cli.add_argument("--weight-decay", type=float, default=5e-4)
    cfg = cli.parse_args()

    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed * 31 + 7)
    val_points, val_padding, val_labels = scenes(512, g)

    model = Perceiver()
    criterion = nn.CrossEntropyLoss()
    sgd = torch.optim.SGD(decay_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=0.9,
                          nesterov=True)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=cfg.steps)

    trace = []
    for step in range(cfg.steps):
        points, padding, labels = scenes(cfg.batch, g)
        model.train()
        loss = criterion(model(points, padding), labels)
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        cosine.step()
        trace.append(loss.item())
        if step % 25 == 0:
            print(f"step {step:3d} | loss {trace[-1]:.4f} | lr {cosine.get_last_lr()[0]:.4f}")

    model.eval()
    with torch.no_grad():
        logits = model(val_points, val_padding)
        val_loss = criterion(logits, val_labels).item()
        acc = (logits.argmax(-1) == val_labels).float().mean().item()
    print(f"val | loss {val_loss:.4f} | acc {acc:.3f}")

    tail = trace[-max(1, len(trace) // 10):]
    summary = {"first_loss": trace[0], "train_loss": sum(tail) / len(tail), "val_loss": val_loss}
    summary = {k: v if math.isfinite(v) else "nan" for k, v in summary.items()}
    print("CORPUS_RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
