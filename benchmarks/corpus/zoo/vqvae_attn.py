"""VQ-VAE (van den Oord et al. 2017) with VQGAN-style spatial self-attention in the bottleneck.

Synthetic 3x16x16 images of four kinds (a soft coloured blob, oriented two-colour stripes, a
two-colour checkerboard, a ring) plus a little noise, in [-1, 1].

Model
    encoder: 3x3 conv -> SiLU -> stride-2 4x4 conv (16x16 -> 8x8) -> SiLU -> 3x3 conv ->
             AttnBlock -> GroupNorm -> SiLU -> 1x1 conv to the code dimension
    AttnBlock (as in taming-transformers): GroupNorm, q/k/v 1x1 convs, torch.bmm over the 64
             flattened positions scaled by C**-0.5, softmax, torch.bmm with v, 1x1 output conv,
             residual
    quantizer: nn.Embedding codebook (64 codes of dim 16), nearest code by squared distance,
             straight-through estimator, codebook loss + 0.25 x commitment loss
    decoder: 1x1 conv -> AttnBlock -> GroupNorm -> SiLU -> stride-2 transposed conv -> SiLU ->
             3x3 conv to RGB

Loss: MSE reconstruction + the VQ terms; Adam with betas (0.5, 0.9). The losses reported in
CORPUS_RESULT are the reconstruction MSE (training batches and held-out images).
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

IMG = 16
CODES = 64
CODE_DIM = 16
BETA = 0.25


# ----------------------------------------------------------------------------- data
def make_images(n, gen):
    coords = (torch.arange(IMG, dtype=torch.float) + 0.5) / IMG
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    kinds = torch.randint(0, 4, (n,), generator=gen)
    sign = torch.randint(0, 2, (n, 2, 3), generator=gen) * 2 - 1  # saturated palette
    cols = sign * (0.5 + 0.5 * torch.rand(n, 2, 3, generator=gen))
    col_a, col_b = cols[:, 0], cols[:, 1]
    cx = torch.rand(n, 1, 1, generator=gen) * 0.6 + 0.2
    cy = torch.rand(n, 1, 1, generator=gen) * 0.6 + 0.2
    radius = torch.rand(n, 1, 1, generator=gen) * 0.15 + 0.1
    angle = torch.randint(0, 4, (n, 1, 1), generator=gen) * (math.pi / 4)
    freq = torch.randint(2, 5, (n, 1, 1), generator=gen).float()
    phase = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
    cell = torch.randint(2, 5, (n, 1, 1), generator=gen).float()

    dist = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
    blob = torch.exp(-((dist / radius) ** 2))
    proj = xx * torch.cos(angle) + yy * torch.sin(angle)
    stripes = 0.5 + 0.5 * torch.sign(torch.sin(2 * math.pi * freq * proj + phase))
    ix, iy = (xx * IMG).floor(), (yy * IMG).floor()
    checker = ((ix / cell).floor() + (iy / cell).floor()) % 2
    ring = torch.exp(-(((dist - radius * 1.5) / 0.06) ** 2))

    alpha = torch.stack([blob, stripes, checker, ring], dim=1)  # (n, 4, H, W)
    alpha = alpha[torch.arange(n), kinds][:, None]
    images = alpha * col_a[:, :, None, None] + (1 - alpha) * col_b[:, :, None, None]
    images = images + 0.03 * torch.randn(images.shape, generator=gen)
    return images.clamp(-1, 1)


# ----------------------------------------------------------------------------- model
class AttnBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)  # b, hw, c
        k = k.reshape(b, c, hh * ww)  # b, c, hw
        w = torch.bmm(q, k) * (int(c) ** (-0.5))  # b, hw (queries), hw (keys)
        w = F.softmax(w, dim=2)
        v = v.reshape(b, c, hh * ww)
        h = torch.bmm(v, w.permute(0, 2, 1))  # b, c, hw (queries)
        h = self.proj_out(h.reshape(b, c, hh, ww))
        return x + h


class Encoder(nn.Module):
    def __init__(self, ch=32, mid=64):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.Conv2d(ch, mid, 4, stride=2, padding=1)
        self.conv_mid = nn.Conv2d(mid, mid, 3, padding=1)
        self.attn = AttnBlock(mid)
        self.norm_out = nn.GroupNorm(8, mid, eps=1e-6)
        self.pre_quant = nn.Conv2d(mid, CODE_DIM, 1)

    def forward(self, x):
        h = F.silu(self.conv_in(x))
        h = F.silu(self.down(h))
        h = self.attn(self.conv_mid(h))
        return self.pre_quant(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch=32, mid=64):
        super().__init__()
        self.post_quant = nn.Conv2d(CODE_DIM, mid, 1)
        self.attn = AttnBlock(mid)
        self.norm_out = nn.GroupNorm(8, mid, eps=1e-6)
        self.up = nn.ConvTranspose2d(mid, ch, 4, stride=2, padding=1)
        self.conv_out = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, z):
        h = self.attn(self.post_quant(z))
        h = F.silu(self.up(F.silu(self.norm_out(h))))
        return self.conv_out(h)


class VectorQuantizer(nn.Module):
    def __init__(self, n_codes, dim, beta):
        super().__init__()
        self.beta = beta
        self.codebook = nn.Embedding(n_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0, 1.0)

    def forward(self, z):
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        book = self.codebook.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        idx = dist.argmin(dim=1)
        zq = self.codebook(idx).view(b, h, w, c).permute(0, 3, 1, 2)
        codebook_loss = F.mse_loss(zq, z.detach())
        commitment = F.mse_loss(z, zq.detach())
        zq = z + (zq - z).detach()  # straight-through
        return zq, codebook_loss + self.beta * commitment, idx


class VQVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.quantizer = VectorQuantizer(CODES, CODE_DIM, BETA)
        self.decoder = Decoder()

    def forward(self, x):
        zq, vq_loss, idx = self.quantizer(self.encoder(x))
        return self.decoder(zq), vq_loss, idx


# ----------------------------------------------------------------------------- training
def finite(v):
    return v if math.isfinite(v) else "nan"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(4242 + args.seed)
    held_out = make_images(256, gen)

    model = VQVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))

    recon_hist = []
    for step in range(args.steps):
        x = make_images(32, gen)
        x_rec, vq_loss, idx = model(x)
        recon = F.mse_loss(x_rec, x)
        loss = recon + vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        recon_hist.append(recon.item())
        if step % 25 == 0 or step == args.steps - 1:
            used = idx.unique().numel()
            print(f"step {step:4d} recon {recon.item():.4f} vq {vq_loss.item():.4f} codes {used}")

    model.eval()
    with torch.no_grad():
        x_rec, _, idx = model(held_out)
        val = F.mse_loss(x_rec, held_out).item()
    print(f"held-out recon mse {val:.4f} (codes used {idx.unique().numel()}/{CODES})")

    tail = recon_hist[-max(1, args.steps // 10) :]
    print(
        "CORPUS_RESULT "
        + json.dumps(
            {
                "first_loss": finite(recon_hist[0]),
                "train_loss": finite(sum(tail) / len(tail)),
                "val_loss": finite(val),
            }
        )
    )


if __name__ == "__main__":
    main()
