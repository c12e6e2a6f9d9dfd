"""Masked-autoencoder (MAE) pretraining of a small ViT on synthetic colour images.

Written the way the MAE reference code is laid out: a Conv2d patch embedding (4x4 patches of a
3x24x24 image: 36 patches), fixed 2-D sin-cos position embeddings, and per sample a fresh random
shuffle of the patches at every step: the first 25% of the shuffle stay visible, the rest are
masked. The encoder (3 pre-norm ViT blocks, hand-written multi-head attention: one qkv Linear,
``(q @ k^T) * scale``, ``Tensor.softmax``) only ever sees the visible patches. A lighter decoder
projects them to its own width, appends a learned mask token for every masked patch, unshuffles
with ``ids_restore``, adds its own position embeddings and runs one block; a linear layer
predicts each patch's pixels. The loss is the mean squared error on the masked patches only.

Images: a base colour, a linear colour gradient and a coloured oriented grating (random
frequency, orientation and phase) plus a little pixel noise, so a masked patch is predictable
from the visible ones once the model has inferred the image's global parameters.

AdamW (betas 0.9/0.95 as in MAE) with weight decay on weight matrices only (no decay on biases,
norms and the mask token), a warmup then a cosine decay to a floor written as a ``LambdaLR``.
"""

import argparse
import json
import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Cfg:
    img: int = 24
    patch: int = 4
    chans: int = 3
    dim: int = 64
    depth: int = 3
    heads: int = 4
    dec_dim: int = 48
    dec_depth: int = 1
    dec_heads: int = 4
    mask_ratio: float = 0.75
    batch: int = 32
    lr: float = 4e-3
    weight_decay: float = 0.05
    warmup: int = 10
    n_val: int = 256

    @property
    def n_patches(self):
        return (self.img // self.patch) ** 2


def sincos_2d(dim, grid):
    """(grid*grid, dim) fixed position table: half the channels encode rows, half columns."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter).float() / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(),
                            indexing="ij")
    out = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * omega[None, :]
        out += [angles.sin(), angles.cos()]
    return torch.cat(out, dim=1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.proj = nn.Conv2d(cfg.chans, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)

    def forward(self, imgs):
        return self.proj(imgs).flatten(2).transpose(1, 2)


class MaskedAutoencoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        grid = cfg.img // cfg.patch
        self.patch_embed = PatchEmbed(cfg)
        self.register_buffer("pos_embed", sincos_2d(cfg.dim, grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

        self.decoder_embed = nn.Linear(cfg.dim, cfg.dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(cfg.dec_dim, grid)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.dec_dim, cfg.dec_heads) for _ in range(cfg.dec_depth))
        self.decoder_norm = nn.LayerNorm(cfg.dec_dim)
        self.decoder_pred = nn.Linear(cfg.dec_dim, cfg.patch * cfg.patch * cfg.chans)
        self.apply(self._init)
        nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.size(0), -1))
            nn.init.zeros_(m.bias)

    def patchify(self, imgs):
        p, g = self.cfg.patch, self.cfg.img // self.cfg.patch
        x = imgs.reshape(imgs.size(0), self.cfg.chans, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.size(0), g * g, -1)

    def random_masking(self, x, noise):
        B, N, D = x.shape
        keep = int(N * (1 - self.cfg.mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        visible = torch.gather(x, 1, ids_keep[:, :, None].expand(-1, -1, D))
        mask = torch.ones(B, N)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return visible, mask, ids_restore

    def forward_encoder(self, imgs, noise):
        x = self.patch_embed(imgs) + self.pos_embed
        x, mask, ids_restore = self.random_masking(x, noise)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent, ids_restore):
        x = self.decoder_embed(latent)
        B, N = ids_restore.shape
        fill = self.mask_token.expand(B, N - x.size(1), -1)
        x = torch.cat([x, fill], dim=1)
        x = torch.gather(x, 1, ids_restore[:, :, None].expand(-1, -1, x.size(2)))
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))

    def forward(self, imgs, noise=None):
        if noise is None:
            noise = torch.rand(imgs.size(0), self.cfg.n_patches, device=imgs.device)
        latent, mask, ids_restore = self.forward_encoder(imgs, noise)
        pred = self.forward_decoder(latent, ids_restore)
        target = self.patchify(imgs)
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()


def make_images(n, cfg, gen):
    s = cfg.img
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    base = torch.randn(n, 3, 1, 1, generator=gen) * 0.6
    gx = torch.randn(n, 3, 1, 1, generator=gen) * 0.5
    gy = torch.randn(n, 3, 1, 1, generator=gen) * 0.5
    theta = torch.rand(n, 1, 1, 1, generator=gen) * math.pi
    freq = 1.5 + 2.5 * torch.rand(n, 1, 1, 1, generator=gen)
    phase = torch.rand(n, 1, 1, 1, generator=gen) * 2 * math.pi
    amp = torch.randn(n, 3, 1, 1, generator=gen) * 0.7
    along = xs * theta.cos() + ys * theta.sin()
    imgs = base + gx * xs + gy * ys + amp * torch.sin(freq * along + phase)
    return imgs + 0.05 * torch.randn(imgs.shape, generator=gen)


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name == "mask_token" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup, total, floor=0.1):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def main():
    ap = argparse.ArgumentParser(description="MAE pretraining on synthetic images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=160)
    args = ap.parse_args()

    cfg = Cfg()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(4242 + args.seed)
    val_imgs = make_images(cfg.n_val, cfg, gen)
    val_noise = torch.rand(cfg.n_val, cfg.n_patches, generator=gen)

    model = MaskedAutoencoder(cfg)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, args.steps))

    log = []
    model.train()
    for it in range(args.steps):
        imgs = make_images(cfg.batch, cfg, gen)
        loss = model(imgs)  # a new random mask per sample at every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        log.append(loss.item())
        if it % 20 == 0 or it == args.steps - 1:
            print(f"it {it:4d}  masked mse {log[-1]:.4f}  lr {sched.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        val = model(val_imgs, noise=val_noise).item()
    print(f"val masked mse {val:.4f}")

    k = max(1, len(log) // 10)

    def fin(v):
        return v if math.isfinite(v) else "nan"

    print("CORPUS_RESULT " + json.dumps(
        {"first_loss": fin(log[0]), "train_loss": fin(sum(log[-k:]) / k), "val_loss": fin(val)}))


if __name__ == "__main__":
    main()
