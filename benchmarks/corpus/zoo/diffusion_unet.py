"""A DDPM-style denoiser: a small conv U-Net trained to predict the noise on structured images.

The U-Net: a stem conv, two resolutions down (residual blocks, stride-2 conv downsampling), a
middle stage at 4x4 with one hand-written multi-head self-attention block over the 16 positions,
two resolutions back up (nearest upsampling, skip connections concatenated). Every residual
block has GroupNorm + SiLU + conv twice and adds a projection of the timestep embedding
(sinusoidal features through a small MLP) between its two convs.

Data: single-channel 16x16 images from four kinds of structure (horizontal stripes, vertical
stripes, a filled square, a ring), random phase / position / size / contrast, in [-1, 1]. The
forward process is the DDPM one with a linear beta schedule over T = 100 steps; the loss is the
MSE between the predicted and the true noise at a uniformly drawn timestep.

AdamW, ``clip_grad_norm_(1.0)``, and an exponential moving average of the weights (kept as
shadow tensors, warm-started decay) that is swapped into the model for validation: the MSE of
the noise prediction on a fixed held-out set of images, timesteps and noises.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

SIZE = 16
T_STEPS = 100
BASE = 12
EMB = 64
GROUPS = 4
BATCH = 16
LR = 1e-3
EMA_MAX = 0.99
N_VAL = 128


def structured_images(n: int, g: torch.Generator) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    kind = torch.randint(0, 4, (n,), generator=g)
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    period = 3 + torch.randint(0, 4, (n, 1, 1), generator=g).float()
    cy = 4 + torch.rand(n, 1, 1, generator=g) * 8
    cx = 4 + torch.rand(n, 1, 1, generator=g) * 8
    size = 2 + torch.rand(n, 1, 1, generator=g) * 3
    contrast = 0.6 + 0.4 * torch.rand(n, 1, 1, generator=g)
    h_stripes = torch.sin(2 * math.pi * ys / period + phase).sign()
    v_stripes = torch.sin(2 * math.pi * xs / period + phase).sign()
    square = ((ys - cy).abs() < size) & ((xs - cx).abs() < size)
    radius = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()
    ring = (radius - size - 1).abs() < 1.0
    shapes = torch.stack([h_stripes, v_stripes, square.float() * 2 - 1, ring.float() * 2 - 1], 1)
    img = shapes[torch.arange(n), kind] * contrast
    return img.unsqueeze(1)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half).float() / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_proj = nn.Linear(EMB, c_out)
        self.norm2 = nn.GroupNorm(GROUPS, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens laid out (batch, positions, channels)."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, L, C = tokens.shape
        q, k, v = self.qkv(tokens).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(B, L, C))


class AttnBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels)
        self.attn = SelfAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out = self.attn(tokens).transpose(1, 2).reshape(B, C, H, W)
        return x + out


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3 = BASE, 2 * BASE, 2 * BASE
        self.time_mlp = nn.Sequential(nn.Linear(BASE, EMB), nn.SiLU(), nn.Linear(EMB, EMB))
        self.stem = nn.Conv2d(1, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1)
        self.pool1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)  # 16 -> 8
        self.down2 = ResBlock(c1, c2)
        self.pool2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)  # 8 -> 4
        self.mid1 = ResBlock(c2, c3)
        self.mid_attn = AttnBlock(c3)
        self.mid2 = ResBlock(c3, c3)
        self.up2 = ResBlock(c3 + c2, c2)
        self.up1 = ResBlock(c2 + c1, c1)
        self.out_norm = nn.GroupNorm(GROUPS, c1)
        self.out_conv = nn.Conv2d(c1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_features(t, BASE))
        h0 = self.down1(self.stem(x), emb)  # 16x16
        h1 = self.down2(self.pool1(h0), emb)  # 8x8
        h = self.mid2(self.mid_attn(self.mid1(self.pool2(h1), emb)), emb)  # 4x4
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1), emb)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h0], 1), emb)
        return self.out_conv(F.silu(self.out_norm(h)))


class EMA:
    """Shadow copies of the weights; ``swapped_in`` puts them into the model for evaluation."""

    def __init__(self, model: nn.Module) -> None:
        self.params = list(model.parameters())
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(EMA_MAX, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def noised(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
           alpha_bar: torch.Tensor) -> torch.Tensor:
    a = alpha_bar[t][:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def as_json_number(x: float):
    return x if math.isfinite(x) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(900 + args.seed)
    betas = torch.linspace(1e-4, 0.02, T_STEPS)
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    val_x0 = structured_images(N_VAL, g)
    val_t = torch.randint(0, T_STEPS, (N_VAL,), generator=g)
    val_noise = torch.randn(val_x0.shape, generator=g)

    model = UNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    ema = EMA(model)

    losses = []
    model.train()
    for step in range(args.steps):
        x0 = structured_images(BATCH, g)
        t = torch.randint(0, T_STEPS, (BATCH,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        pred = model(noised(x0, t, noise, alpha_bar), t)
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update()
        losses.append(loss.item())
        if step % 25 == 0:
            print(f"step {step:4d}  loss {losses[-1]:.4f}")

    model.eval()
    ema.swap()
    with torch.no_grad():
        val_loss = F.mse_loss(model(noised(val_x0, val_t, val_noise, alpha_bar), val_t),
                              val_noise).item()
    ema.swap()
    print(f"val loss (EMA weights) {val_loss:.4f}")
    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": as_json_number(losses[0]),
        "train_loss": as_json_number(sum(losses[-tail:]) / tail),
        "val_loss": as_json_number(val_loss),
    }))


if __name__ == "__main__":
    main()
