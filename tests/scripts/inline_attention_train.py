"""A decoder whose attention is written inline in a ``Block`` (one fused ``proj`` for q, k, v;
nothing named attention), as PaLM-style parallel blocks and many hand-written models are:
hfault finds the attention by what the block computes. ``--sdpa`` takes the attention through
``F.scaled_dot_product_attention`` instead of a softmax; ``--bug`` multiplies block 1's scores
by √d instead of dividing (16× too sharp at a head size of 16)."""

import math

import torch
from common import parse, save
from torch import nn
from torch.nn import functional as F

T, D, H, V = 16, 32, 2, 20


class Block(nn.Module):
    def __init__(self, wrong_scale: bool, sdpa: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.proj = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))
        self.scale = math.sqrt(D // H) if wrong_scale else 1 / math.sqrt(D // H)
        self.sdpa = sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q, k, v = (t.view(b, T, H, D // H).transpose(1, 2)
                   for t in self.proj(self.norm(x)).split(D, -1))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            scores = q @ k.transpose(-2, -1) * self.scale
            future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
            y = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
        x = x + self.out(y.transpose(1, 2).reshape(b, T, D))
        return x + self.mlp(self.norm2(x))


class Decoder(nn.Module):
    def __init__(self, bug: bool, sdpa: bool) -> None:
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Parameter(torch.randn(T, D) * 0.02)
        self.blocks = nn.Sequential(Block(False, sdpa), Block(bug, sdpa), Block(False, sdpa))
        self.head = nn.Linear(D, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.tok(idx) + self.pos))


def main() -> None:
    args = parse({"--bug": {"action": "store_true"}, "--sdpa": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    model = Decoder(args.bug, args.sdpa)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(args.steps):
        start = torch.randint(0, V, (16, 1))
        data = (start + torch.arange(T + 1) % 3) % V  # a pattern the attention can read
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
