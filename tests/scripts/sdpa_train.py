"""Causal self-attention through F.scaled_dot_product_attention (2 heads), or nn.MultiheadAttention
with need_weights=False (--mha); fixed batch, so step 1's attention weights are known."""

import torch
from common import parse
from torch import nn
from torch.nn import functional as F


class CausalAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Net(nn.Module):
    def __init__(self, mha: bool) -> None:
        super().__init__()
        self.mha = mha
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True) if mha else CausalAttention()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(x, x, x, need_weights=False)[0] if self.mha else self.attn(x)
        return self.head(h.mean(1))


def build(seed: int = 0, mha: bool = False):
    torch.manual_seed(seed)
    model = Net(mha)
    x = torch.randn(4, 6, 8)
    y = torch.tensor([0, 1, 1, 0])
    return model, x, y


def main() -> None:
    args = parse({"--mha": {"action": "store_true"}})
    model, x, y = build(args.seed, args.mha)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(args.steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
