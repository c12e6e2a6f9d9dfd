"""A Transformer-XL-style language model: each segment attends to a detached memory of the
previous segment's hidden states and to itself under a causal mask over [memory; segment], so its
scores have more keys than queries. ``--leak 1``: the mask lets each position see one token
ahead."""

import argparse
import math

import torch
from torch import nn
from torch.nn import functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--leak", type=int, default=0)
args = parser.parse_args()
torch.manual_seed(0)
VOCAB, D, SEG, MEM = 16, 32, 8, 8


class MemoryAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.kv, self.out = nn.Linear(D, D), nn.Linear(D, 2 * D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        context = x if memory is None else torch.cat([memory, x], dim=1)
        k, v = self.kv(context).chunk(2, dim=-1)
        scores = self.q(x) @ k.transpose(1, 2) / math.sqrt(D)
        m = context.shape[1] - x.shape[1]
        keep = torch.ones(x.shape[1], context.shape[1], dtype=torch.bool).tril(m + args.leak)
        return self.out(scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v)


class MemoryLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.attn = MemoryAttention()
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(tokens)
        h = h + self.attn(self.norm(h), memory)
        return self.head(h), h.detach()


model = MemoryLM()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
stream = torch.randint(0, VOCAB, (4, SEG * (args.steps + 1) + 1))
stream[:, 1::2] = (stream[:, 0:-1:2] + 1) % VOCAB  # every second token follows from the one before
memory = None
for step in range(args.steps):
    chunk = stream[:, step * SEG: (step + 1) * SEG + 1]
    logits, memory = model(chunk[:, :-1], memory)
    memory = memory[:, -MEM:]
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), chunk[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"final loss {loss.item():.3f}")
