"""Slot Attention autoencoder (Locatello et al., 2020) on synthetic multi-blob images.

A small CNN encoder turns a 12x12 RGB image into a 12x12 grid of features, adds a soft 2-D
position embedding (a linear map of the four distances to the image borders), and flattens it
into 144 input vectors (LayerNorm + MLP). Five slots are drawn from a learned Gaussian
(``slots_mu``, ``slots_log_sigma``) and refined for three iterations of slot attention: dot
products between slot queries and input keys, a softmax over the SLOTS axis (slots compete for
every input), a weighted mean over the inputs, a ``GRUCell`` update and a residual MLP. Each slot
is decoded on its own by a spatial-broadcast decoder (the slot tiled over the grid, its own
position embedding, per-pixel layers as 1x1 convolutions) into RGB and an alpha logit; the
alphas are normalised with a softmax over the slots and mix the per-slot RGB into the
reconstruction. Loss: mean squared error to the input image.

Data: 2-4 soft-edged coloured discs (6 colours, random radius and position, occlusion by
drawing order) over a dim noisy background, scaled to [-1, 1]. Adam with a linear warmup
followed by an exponential decay of the learning rate (``LambdaLR``).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Setup:
    size: int = 12
    slots: int = 5
    dim: int = 32
    iters: int = 3
    batch: int = 16
    steps: int = 320
    lr: float = 4e-3
    warmup: int = 15
    half_life: int = 400  # steps for the decay to halve the learning rate
    val_images: int = 64


COLOURS = torch.tensor([
    [1.0, 0.2, 0.2], [0.2, 0.9, 0.3], [0.25, 0.35, 1.0],
    [1.0, 0.9, 0.2], [0.9, 0.3, 0.9], [0.2, 0.9, 0.9],
])


def make_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(),
                            indexing="ij")
    images = 0.1 + 0.05 * torch.randn(n, 3, size, size, generator=gen)
    counts = torch.randint(2, 5, (n,), generator=gen)
    for i in range(n):
        for _ in range(int(counts[i])):
            cy, cx = (torch.rand(2, generator=gen) * (size - 4) + 2.0).tolist()
            radius = 2.2 + 1.3 * torch.rand(1, generator=gen).item()
            colour = COLOURS[int(torch.randint(0, len(COLOURS), (1,), generator=gen))]
            dist = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()
            alpha = torch.sigmoid((radius - dist) * 3.0)
            images[i] = images[i] * (1 - alpha) + colour[:, None, None] * alpha
    return images * 2.0 - 1.0  # in [-1, 1]


def border_grid(size: int) -> torch.Tensor:
    """(size, size, 4): distances to the four borders, in [0, 1]."""
    ramp = torch.linspace(0.0, 1.0, size)
    ys, xs = torch.meshgrid(ramp, ramp, indexing="ij")
    return torch.stack([ys, xs, 1 - ys, 1 - xs], dim=-1)


class SoftPositionEmbed(nn.Module):
    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(4, dim)
        self.register_buffer("grid", border_grid(size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, dim)
        return x + self.proj(self.grid)


class Encoder(nn.Module):
    def __init__(self, cfg: Setup) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, cfg.dim, 5, padding=2)
        self.conv2 = nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1)
        self.pos = SoftPositionEmbed(cfg.dim, cfg.size)
        self.norm = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.ReLU(),
                                 nn.Linear(cfg.dim, cfg.dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(images))))
        h = self.pos(h.permute(0, 2, 3, 1))
        h = h.flatten(1, 2)  # (B, N, dim)
        return self.mlp(self.norm(h))


class SlotAttention(nn.Module):
    def __init__(self, cfg: Setup, eps: float = 1e-8) -> None:
        super().__init__()
        d = cfg.dim
        self.iters, self.eps, self.scale = cfg.iters, eps, d ** -0.5
        self.slots_mu = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.slots_log_sigma = nn.Parameter(torch.zeros(1, 1, d))
        self.norm_inputs = nn.LayerNorm(d)
        self.norm_slots = nn.LayerNorm(d)
        self.norm_mlp = nn.LayerNorm(d)
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_k = nn.Linear(d, d, bias=False)
        self.to_v = nn.Linear(d, d, bias=False)
        self.gru = nn.GRUCell(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))

    def forward(self, inputs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        b, _, d = inputs.shape
        slots = self.slots_mu + self.slots_log_sigma.exp() * noise  # (B, K, d)
        inputs = self.norm_inputs(inputs)
        k, v = self.to_k(inputs), self.to_v(inputs)
        for _ in range(self.iters):
            previous = slots
            q = self.to_q(self.norm_slots(slots))
            dots = torch.einsum("bkd,bnd->bkn", q, k) * self.scale
            attn = dots.softmax(dim=1) + self.eps  # normalised over the slots
            attn = attn / attn.sum(dim=-1, keepdim=True)  # weighted mean over the inputs
            updates = torch.einsum("bkn,bnd->bkd", attn, v)
            slots = self.gru(updates.reshape(-1, d), previous.reshape(-1, d)).reshape(b, -1, d)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots


class BroadcastDecoder(nn.Module):
    def __init__(self, cfg: Setup) -> None:
        super().__init__()
        self.size = cfg.size
        self.pos = SoftPositionEmbed(cfg.dim, cfg.size)
        self.layers = nn.Sequential(
            nn.Conv2d(cfg.dim, 48, 1), nn.ReLU(),
            nn.Conv2d(48, 48, 1), nn.ReLU(),
            nn.Conv2d(48, 4, 1),
        )

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k, d = slots.shape
        tiled = slots.reshape(b * k, 1, 1, d).expand(-1, self.size, self.size, -1)
        h = self.pos(tiled).permute(0, 3, 1, 2)
        out = self.layers(h).reshape(b, k, 4, self.size, self.size)
        rgb, alpha_logits = out[:, :, :3], out[:, :, 3:]
        masks = alpha_logits.softmax(dim=1)  # per-pixel competition between the slots
        return (rgb * masks).sum(dim=1), masks


class SlotAutoencoder(nn.Module):
    def __init__(self, cfg: Setup) -> None:
        super().__init__()
        self.encoder = Encoder(cfg)
        self.slot_attention = SlotAttention(cfg)
        self.decoder = BroadcastDecoder(cfg)

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        slots = self.slot_attention(self.encoder(images), noise)
        recon, _ = self.decoder(slots)
        return recon


def warmup_then_decay(cfg: Setup):
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup)
        return warm * 0.5 ** (step / cfg.half_life)
    return factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=Setup.steps)
    opts = parser.parse_args()
    cfg = Setup(steps=opts.steps)

    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(900 + opts.seed)
    val_images = make_images(cfg.val_images, cfg.size, gen)
    val_noise = torch.randn(cfg.val_images, cfg.slots, cfg.dim, generator=gen)

    model = SlotAutoencoder(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(cfg))

    trace: list[float] = []
    model.train()
    for step in range(cfg.steps):
        images = make_images(cfg.batch, cfg.size, gen)
        noise = torch.randn(cfg.batch, cfg.slots, cfg.dim, generator=gen)
        loss = F.mse_loss(model(images, noise), images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        trace.append(loss.item())
        if step % 25 == 0 or step == cfg.steps - 1:
            print(f"[{step:3d}] mse={trace[-1]:.5f} lr={scheduler.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        val_loss = F.mse_loss(model(val_images, val_noise), val_images).item()
    print(f"[val] mse={val_loss:.5f}")

    def clean(x: float) -> float | str:
        return x if math.isfinite(x) else "nan"

    tail = max(1, cfg.steps // 10)
    print("CORPUS_RESULT " + json.dumps({"first_loss": clean(trace[0]),
                                         "train_loss": clean(sum(trace[-tail:]) / tail),
                                         "val_loss": clean(val_loss)}))


if __name__ == "__main__":
    main()
