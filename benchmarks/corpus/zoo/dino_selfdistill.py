"""DINO-style self-distillation without labels (Caron et al. 2021), written by hand.

A small ViT student (strided-conv patch embedding, a CLS token, learned positions, pre-LN blocks
whose attention is ``F.scaled_dot_product_attention``) ends in a projection head onto K
prototypes. The teacher has the same architecture and is never trained by gradient: after each
optimizer step its weights move towards the student's (exponential moving average). The
teacher's prototype logits are centred by a running centre and sharpened with a low
temperature; the student's are softened with a higher one; the loss is the cross-entropy between
the two distributions, teacher on one augmented view and student on the other (both ways). It is
written with ``F.cross_entropy`` and probability targets.

Images: 3x16x16, drawn from 6 latent classes (an oriented two-colour grating per class with a
random phase, a random blob and noise); the views are random 10x10 crops resized back to 16x16,
random horizontal flips, per-channel colour jitter and noise. Validation: the same loss on held-out
images (eval mode, no gradient, the current centre) and a 5-NN accuracy of the student's CLS
features against the latent classes, printed only.

AdamW (decay on matrices only) with a linear warmup then cosine ``LambdaLR``, ``clip_grad_norm_``;
the optimizer holds the student only.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Cfg:
    image: int = 16
    patch: int = 4
    dim: int = 64
    depth: int = 2
    heads: int = 4
    prototypes: int = 32
    classes: int = 6
    batch: int = 48
    lr: float = 4e-4
    weight_decay: float = 0.04
    warmup: int = 15
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    center_momentum: float = 0.9
    ema: float = 0.96
    clip: float = 0.5


# ----------------------------------------------------------------------------- data
class LatentImages:
    def __init__(self, cfg: Cfg, gen: torch.Generator) -> None:
        self.cfg, self.gen = cfg, gen
        k = cfg.classes
        self.angle = torch.arange(k) * math.pi / k + 0.2 * torch.rand(k, generator=gen)
        self.freq = 0.6 + 0.5 * torch.rand(k, generator=gen)
        self.colour_a = torch.rand(k, 3, generator=gen)
        self.colour_b = torch.rand(k, 3, generator=gen)
        ax = torch.arange(cfg.image, dtype=torch.float32)
        self.yy, self.xx = torch.meshgrid(ax, ax, indexing="ij")

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gen
        y = torch.randint(0, self.cfg.classes, (n,), generator=g)
        ang = self.angle[y] + 0.15 * torch.randn(n, generator=g)
        phase = 2 * math.pi * torch.rand(n, generator=g)
        proj = (self.xx[None] * torch.cos(ang)[:, None, None]
                + self.yy[None] * torch.sin(ang)[:, None, None])
        wave = 0.5 + 0.5 * torch.sin(self.freq[y][:, None, None] * proj + phase[:, None, None])
        img = (wave[:, None] * self.colour_a[y][:, :, None, None]
               + (1 - wave[:, None]) * self.colour_b[y][:, :, None, None])
        cy, cx = (torch.rand(2, n, generator=g) * self.cfg.image)
        blob = torch.exp(-((self.yy[None] - cy[:, None, None]) ** 2
                           + (self.xx[None] - cx[:, None, None]) ** 2) / 8.0)
        img = img + 0.5 * blob[:, None] * torch.rand(n, 3, 1, 1, generator=g)
        img = img + 0.1 * torch.randn(img.shape, generator=g)
        return (img - 0.5) / 0.3, y


def augment(x: torch.Tensor, gen: torch.Generator, crop: int = 10) -> torch.Tensor:
    n, _, size, _ = x.shape
    out = torch.empty_like(x)
    offs = torch.randint(0, size - crop + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        oy, ox = int(offs[i, 0]), int(offs[i, 1])
        patch = x[i:i + 1, :, oy:oy + crop, ox:ox + crop]
        patch = F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)
        out[i] = patch[0].flip(-1) if flips[i] else patch[0]
    gain = 1 + 0.3 * torch.randn(n, 3, 1, 1, generator=gen)  # per-channel colour jitter
    return out * gain + 0.25 * torch.randn(x.shape, generator=gen)


# ----------------------------------------------------------------------------- model
class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ProjectionHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> linear layer onto the prototypes."""

    def __init__(self, dim: int, prototypes: int, hidden: int = 128, bottleneck: int = 32):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.Linear(bottleneck, prototypes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


class TinyViT(nn.Module):
    def __init__(self, cfg: Cfg) -> None:
        super().__init__()
        tokens = (cfg.image // cfg.patch) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens + 1, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = ProjectionHead(cfg.dim, cfg.prototypes)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(img))


# ----------------------------------------------------------------------------- DINO pieces
class DinoLoss:
    def __init__(self, cfg: Cfg) -> None:
        self.cfg = cfg
        self.center = torch.zeros(1, cfg.prototypes)

    def targets(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.softmax((teacher_logits - self.center) / self.cfg.teacher_temp, dim=-1)

    def __call__(self, student_out: list[torch.Tensor], teacher_out: list[torch.Tensor]):
        total, pairs = 0.0, 0
        for ti, t in enumerate(teacher_out):
            target = self.targets(t)
            for si, s in enumerate(student_out):
                if si == ti:
                    continue
                total = total + F.cross_entropy(s / self.cfg.student_temp, target)
                pairs += 1
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_out: list[torch.Tensor]) -> None:
        batch_center = torch.cat(teacher_out).mean(dim=0, keepdim=True)
        m = self.cfg.center_momentum
        self.center = self.center * m + batch_center * (1 - m)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def decay_groups(model: nn.Module, wd: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}]


@torch.no_grad()
def knn_accuracy(model: TinyViT, bank_x, bank_y, query_x, query_y, k: int = 5) -> float:
    fb = F.normalize(model.features(bank_x), dim=-1)
    fq = F.normalize(model.features(query_x), dim=-1)
    nearest = (fq @ fb.T).topk(k, dim=1).indices
    votes = F.one_hot(bank_y[nearest], int(bank_y.max()) + 1).sum(1)
    return (votes.argmax(1) == query_y).float().mean().item()


def num(x: float) -> float | str:
    return x if math.isfinite(x) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=160)
    args = ap.parse_args()
    cfg = Cfg()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    data = LatentImages(cfg, gen)
    val_x, val_y = data.sample(192)
    val_views = [augment(val_x, gen), augment(val_x, gen)]
    bank_x, bank_y = data.sample(240)

    student = TinyViT(cfg)
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    criterion = DinoLoss(cfg)

    opt = torch.optim.AdamW(decay_groups(student, cfg.weight_decay), lr=cfg.lr)

    def schedule(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, args.steps - cfg.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    log: list[float] = []
    for step in range(args.steps):
        student.train()
        images, _ = data.sample(cfg.batch)
        views = [augment(images, gen), augment(images, gen)]
        with torch.no_grad():
            t_out = [teacher(v) for v in views]
        s_out = [student(v) for v in views]
        loss = criterion(s_out, t_out)

        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), cfg.clip)
        opt.step()
        sched.step()
        ema_update(teacher, student, cfg.ema)
        criterion.update_center(t_out)

        log.append(loss.item())
        if step % 20 == 0:
            print(f"step {step:3d}  dino loss {log[-1]:.4f}")

    student.eval()
    teacher.eval()
    with torch.no_grad():
        val_loss = criterion([student(v) for v in val_views],
                             [teacher(v) for v in val_views]).item()
    acc = knn_accuracy(student, bank_x, bank_y, val_x, val_y)
    print(f"val dino loss {val_loss:.4f}  5-NN accuracy {acc:.3f}")

    n = max(1, len(log) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": num(log[0]),
        "train_loss": num(sum(log[-n:]) / n),
        "val_loss": num(val_loss),
    }))


if __name__ == "__main__":
    main()
