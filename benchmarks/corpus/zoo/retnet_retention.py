"""RetNet-style causal LM (Sun et al. 2023) with multi-scale retention in its parallel form.

Each retention layer computes, per head h with its own decay gamma_h,

    Retention(X) = (Q K^T * D) V,   D[n, m] = gamma_h ** (n - m) for n >= m, 0 otherwise,

with rotary position rotations on Q and K and no softmax anywhere. As in the reference code the
decay mask rows are normalised by the square root of their sum and the retention scores by their
absolute row sums (at least 1). The heads' outputs go through a GroupNorm (one group per head),
are gated by swish(X W_G) and projected by W_O. Blocks are pre-LN: retention then a GELU FFN.

Data: noisy periodic token streams. Each sequence repeats a random motif of 3-8 tokens (from 20)
for 48 positions; every token is replaced by a random one with probability 0.1. The next token is
predictable once the period is recognised (copy the token one period back).

Training: AdamW (decay on matrices only), linear warmup then linear decay to 30% via LambdaLR,
clip_grad_norm_ 1.0.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Config:
    vocab: int = 20
    seq_len: int = 48
    dim: int = 64
    heads: int = 4
    layers: int = 2
    ffn_mult: int = 2
    batch: int = 32
    lr: float = 5e-3
    warmup: int = 15
    weight_decay: float = 0.05
    clip: float = 1.0
    noise: float = 0.1


def rotate(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotary rotation of consecutive feature pairs; x is (B, H, L, d)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


class MultiScaleRetention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.g_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.group_norm = nn.GroupNorm(heads, dim)
        gammas = 1.0 - 2.0 ** (-2.0 - torch.arange(heads, dtype=torch.float))
        self.register_buffer("log_gamma", torch.log(gammas), persistent=False)
        inv_freq = 1.0 / (10000 ** torch.linspace(0, 1, self.head_dim // 2))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def decay_mask(self, length: int, device: torch.device) -> Tensor:
        idx = torch.arange(length, device=device, dtype=torch.float)
        distance = idx[:, None] - idx[None, :]  # n - m
        exponent = distance[None] * self.log_gamma[:, None, None]  # (H, L, L)
        exponent = exponent.masked_fill((distance < 0)[None], float("-inf"))
        decay = exponent.exp()
        return decay / decay.sum(dim=-1, keepdim=True).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        H, d = self.heads, self.head_dim
        angle = torch.arange(L, device=x.device, dtype=torch.float)[:, None] * self.inv_freq
        sin, cos = angle.sin(), angle.cos()

        q = self.q_proj(x).view(B, L, H, d).transpose(1, 2)
        k = self.k_proj(x).view(B, L, H, d).transpose(1, 2) * self.scaling
        v = self.v_proj(x).view(B, L, H, d).transpose(1, 2)
        q, k = rotate(q, sin, cos), rotate(k, sin, cos)

        scores = (q @ k.transpose(-1, -2)) * self.decay_mask(L, x.device)
        scores = scores / scores.detach().abs().sum(dim=-1, keepdim=True).clamp(min=1.0)
        out = (scores @ v).transpose(1, 2).reshape(B * L, C)
        out = self.group_norm(out).view(B, L, C)
        out = F.silu(self.g_proj(x)) * out
        return self.o_proj(out)


class RetNetBlock(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.retention = MultiScaleRetention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential()
        self.ffn.add_module("fc1", nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim))
        self.ffn.add_module("act", nn.GELU())
        self.ffn.add_module("fc2", nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.retention(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class RetNetLM(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.layers = nn.ModuleList(RetNetBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def periodic_batch(cfg: Config, n: int, gen: torch.Generator) -> Tensor:
    periods = torch.randint(3, 9, (n,), generator=gen)
    motifs = torch.randint(0, cfg.vocab, (n, 8), generator=gen)
    pos = torch.arange(cfg.seq_len + 1)
    seq = motifs.gather(1, pos[None, :] % periods[:, None])
    noisy = torch.rand(seq.shape, generator=gen) < cfg.noise
    random_tokens = torch.randint(0, cfg.vocab, seq.shape, generator=gen)
    return torch.where(noisy, random_tokens, seq)


def lm_loss(model: RetNetLM, seq: Tensor) -> Tensor:
    logits = model(seq[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), seq[:, 1:].reshape(-1))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def clean(x: float) -> float | str:
    return x if math.isfinite(x) else "nan"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=220)
    args = parser.parse_args()
    cfg = Config()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 77)
    val_seq = periodic_batch(cfg, 256, gen)

    model = RetNetLM(cfg)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    total = args.steps

    def schedule(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return max(0.3, 1.0 - (step - cfg.warmup) / max(1, total - cfg.warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    losses = []
    model.train()
    for step in range(total):
        seq = periodic_batch(cfg, cfg.batch, gen)
        loss = lm_loss(model, seq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0 or step == total - 1:
            print(f"step {step:4d} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        val = lm_loss(model, val_seq).item()
    print(f"validation loss {val:.4f}")

    k = max(1, total // 10)
    result = {
        "first_loss": clean(losses[0]),
        "train_loss": clean(sum(losses[-k:]) / k),
        "val_loss": clean(val),
    }
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
