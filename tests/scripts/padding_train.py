"""A two-block encoder over padded token sequences (lengths 3-16 of 16, pad id 0) with an
attention-pooling head, classifying which marker token a sequence holds most often. Each
attention hides the padded keys with ``masked_fill``; ``--unmasked-pool``: the pooling head is
called without the mask (the bug)."""

import math

import torch
from common import parse, save
from torch import nn
from torch.nn import functional as F

B, T, D, V, H, C = 16, 16, 32, 20, 4, 4
PAD = 0


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.out = nn.Linear(D, D)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor,
                pad: torch.Tensor | None) -> torch.Tensor:
        b, lq, lk = keys.shape[0], queries.shape[1], keys.shape[1]
        q = self.q(queries).view(b, lq, H, D // H).transpose(1, 2)
        k = self.k(keys).view(b, lk, H, D // H).transpose(1, 2)
        v = self.v(keys).view(b, lk, H, D // H).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // H)
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        y = scores.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, lq, D))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(D)
        self.attn = Attention()
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        x = x + self.attn(h, h, pad)
        return x + self.mlp(x)


class Pool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seed = nn.Parameter(torch.randn(1, 1, D) / math.sqrt(D))
        self.attn = Attention()

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        return self.attn(self.seed.expand(x.shape[0], -1, -1), x, pad)[:, 0]


class Classifier(nn.Module):
    def __init__(self, unmasked_pool: bool) -> None:
        super().__init__()
        self.unmasked_pool = unmasked_pool
        self.tok = nn.Embedding(V, D, padding_idx=PAD)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.pool = Pool()
        self.head = nn.Linear(D, C)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == PAD
        x = self.tok(ids)
        for block in self.blocks:
            x = block(x, pad)
        return self.head(self.pool(x, None if self.unmasked_pool else pad))


def batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(C + 1, V, (B, T), generator=gen)
    labels = torch.randint(0, C, (B,), generator=gen)
    ids[torch.arange(B), torch.randint(0, 3, (B,), generator=gen)] = labels + 1
    lengths = torch.randint(3, T + 1, (B,), generator=gen)
    ids[torch.arange(T)[None, :] >= lengths[:, None]] = PAD
    return ids, labels


def main() -> None:
    args = parse({"--unmasked-pool": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = Classifier(args.unmasked_pool)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(args.steps):
        ids, labels = batch(gen)
        loss = F.cross_entropy(model(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
