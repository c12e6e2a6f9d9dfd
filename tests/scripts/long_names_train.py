"""A small transformer encoder with deep module paths (``encoder.layers.0.self_attention.q_proj``)
and one fault: that query projection has its own param group at 100x the learning rate. Its
reports exercise every table of the terminal report with names too long for narrow terminals.
"""

import math

import torch
from common import parse
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attention = SelfAttention(dim, heads)
        self.attention_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                          nn.Linear(2 * dim, dim))
        self.feed_forward_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.self_attention(x))
        return self.feed_forward_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(dim, heads) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Classifier(nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 16, heads: int = 2, depth: int = 2) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.encoder = Encoder(dim, heads, depth)
        self.classification_head = nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classification_head(self.encoder(self.token_embedding(tokens)).mean(1))


def main() -> None:
    args = parse({"--lr": {"type": float, "default": 3e-3}})
    torch.manual_seed(args.seed)
    model = Classifier()
    fast = list(model.encoder.layers[0].self_attention.q_proj.parameters())
    rest = [p for p in model.parameters() if all(p is not f for f in fast)]
    optimizer = torch.optim.AdamW([{"params": rest}, {"params": fast, "lr": args.lr * 100}],
                                  lr=args.lr)
    for _ in range(args.steps):
        tokens = torch.randint(0, 16, (16, 8))
        labels = (tokens[:, 0] > tokens[:, -1]).long()
        loss = F.cross_entropy(model(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
