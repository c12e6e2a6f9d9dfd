"""A model whose self-attention takes q, k and v from one parameter named `packed`, registering a
splitter for it (docs/components.md) so hfault sees three components instead of one."""

import torch
from common import parse
from torch import nn
from torch.nn import functional as F

try:
    from hfault.components import fused, register_splitter
except ImportError:  # run without hfault
    pass
else:
    register_splitter("PackedSelfAttention", fused("packed"), attention=True)


class PackedSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.packed = nn.Parameter(torch.randn(3 * dim, dim) / dim**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = (x @ self.packed.T).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mixer = PackedSelfAttention(16, 2)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mixer(x).mean(1))


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    model = Classifier()
    x, y = torch.randn(8, 5, 16), torch.randint(0, 4, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(args.steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
