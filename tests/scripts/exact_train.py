"""A float64 one-layer self-attention classifier on one fixed batch: its Hessian at the initial
weights is what hfault's step-1 curvature snapshot must match (see tests/test_curvature_cli.py)."""

import math

import torch
from common import parse
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q_proj(x) @ self.k_proj(x).transpose(-2, -1) / math.sqrt(x.shape[-1])
        return self.out_proj(scores.softmax(-1) @ self.v_proj(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x).mean(1))


def build(seed: int = 0):
    torch.manual_seed(seed)
    model = Net().double()
    x = torch.randn(6, 5, 4, dtype=torch.float64) * 2
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return model, x, y


def main() -> None:
    args = parse()
    model, x, y = build(args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(args.steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
