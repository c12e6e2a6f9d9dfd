"""A small hand-written Swin Transformer classifying synthetic textured images.

Patch embedding (a stride-2 convolution), two stages of Swin blocks: windowed multi-head
self-attention with a learned relative position bias table, shifted windows (``torch.roll``) in
every second block of the first stage with the region mask that shifting needs (added to the
scores as ``-inf``), a patch-merging layer between the stages, global average pooling and a
linear head. Trained on a fixed training set in mini-batches, SGD with Nesterov momentum and
weight decay, a linear warmup then step decay (``SequentialLR`` of ``LinearLR`` and
``MultiStepLR``), ``F.cross_entropy``.

Data: 10 classes, each a fixed random low-frequency colour texture; an image is its class's
texture circularly shifted by a random offset, with a random per-channel gain and strong
pixel noise, so the class has to be recognised wherever the texture lands.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

IMG = 16
CLASSES = 10
N_TRAIN = 1536
N_VAL = 512
BATCH = 32
NOISE = 1.2
LR = 0.05
WINDOW = 4
WARMUP = 15


def class_textures(g: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(CLASSES, 3, 4, 4, generator=g)
    tex = F.interpolate(coarse, size=(IMG, IMG), mode="bicubic", align_corners=False)
    return tex / tex.flatten(1).std(1).view(-1, 1, 1, 1)


def make_images(textures: torch.Tensor, n: int, g: torch.Generator):
    """Each image: its class's texture circularly shifted by a random offset (``torch.roll``
    per image, done with two gathers), a random per-channel gain, strong pixel noise."""
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    shifts = torch.randint(0, IMG, (n, 2), generator=g)
    grid = torch.arange(IMG)
    rows = ((grid[None] - shifts[:, :1]) % IMG)[:, None, :, None].expand(n, 3, IMG, IMG)
    cols = ((grid[None] - shifts[:, 1:]) % IMG)[:, None, None, :].expand(n, 3, IMG, IMG)
    images = textures[labels].gather(2, rows).gather(3, cols)
    gain = 0.7 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)
    return images * gain + NOISE * torch.randn(n, 3, IMG, IMG, generator=g), labels


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def window_reverse(windows: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    B = windows.shape[0] // ((H // w) * (W // w))
    x = windows.view(B, H // w, W // w, w, w, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index",
                             rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).view(B_, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.heads, N, N) + mask[None, :, None]
            attn = attn.view(-1, self.heads, N, N)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, resolution: int, shift: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = min(WINDOW, resolution)
        self.shift = 0 if resolution <= WINDOW else shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, self.window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)
        if self.shift:
            region = torch.zeros(1, resolution, resolution, 1)
            cuts = (slice(0, -self.window), slice(-self.window, -self.shift),
                    slice(-self.shift, None))
            label = 0
            for hs in cuts:
                for ws in cuts:
                    region[:, hs, ws, :] = label
                    label += 1
            windows = window_partition(region, self.window).squeeze(-1)
            differ = (windows[:, None, :] - windows[:, :, None]) != 0
            mask = torch.zeros(differ.shape).masked_fill(differ, float("-inf"))
            self.register_buffer("attn_mask", mask, persistent=False)
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        H = W = self.resolution
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window), mask=self.attn_mask)
        x = window_reverse(windows, self.window, H, W)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(B, L, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, self.resolution, self.resolution, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class Stage(nn.Module):
    def __init__(self, dim: int, heads: int, resolution: int, depth: int, merge: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, resolution, shift=0 if i % 2 == 0 else WINDOW // 2)
            for i in range(depth))
        self.downsample = PatchMerging(dim, resolution) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTiny(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        res = IMG // 2
        self.patch_embed = PatchEmbed(dim)
        self.layers = nn.ModuleList([
            Stage(dim, 2, res, depth=2, merge=True),
            Stage(2 * dim, 4, res // 2, depth=2, merge=False),
        ])
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, CLASSES)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        for stage in self.layers:
            x = stage(x)
        return self.head(self.norm(x).mean(1))


def as_json_number(x: float):
    return x if math.isfinite(x) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    textures = class_textures(g)
    train_x, train_y = make_images(textures, N_TRAIN, g)
    val_x, val_y = make_images(textures, N_VAL, g)

    model = SwinTiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=WARMUP)
    decay = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[int(0.6 * args.steps) - WARMUP, int(0.85 * args.steps) - WARMUP],
        gamma=0.3)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], [WARMUP])

    losses = []
    step = 0
    model.train()
    while step < args.steps:
        order = torch.randperm(N_TRAIN, generator=g)
        for start in range(0, N_TRAIN - BATCH + 1, BATCH):
            if step == args.steps:
                break
            idx = order[start:start + BATCH]
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if step % 25 == 0:
                print(f"step {step:4d} loss {losses[-1]:.4f} lr {scheduler.get_last_lr()[0]:.4f}")
            step += 1

    model.eval()
    with torch.no_grad():
        val_loss = F.cross_entropy(model(val_x), val_y).item()
        val_acc = (model(val_x).argmax(1) == val_y).float().mean().item()
    print(f"val loss {val_loss:.4f} acc {val_acc:.3f}")
    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": as_json_number(losses[0]),
        "train_loss": as_json_number(sum(losses[-tail:]) / tail),
        "val_loss": as_json_number(val_loss),
    }))


if __name__ == "__main__":
    main()
