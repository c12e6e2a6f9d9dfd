"""An encoder–decoder laid out as x-transformers lays it out: each layer's self-attention,
cross-attention and feed-forward are consecutive entries of one list, each a (norm, block,
residual) triple, so ``layers.0.1`` (causal self-attention) and ``layers.1.1`` (cross-attention)
share one path pattern. The source is as long as the batch is large (16), the target is not (9):
a cross-attention over 16 keys in a batch of 16 is not attention over the batch.
``--drop-mask``: the second decoder layer's self-attention lost its causal mask."""

import torch
from common import parse
from torch import nn
from torch.nn import functional as F

B, S, T, D, V = 16, 16, 9, 32, 12


class Attention(nn.Module):
    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.to_q, self.to_k, self.to_v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.to_out = nn.Linear(D, D)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(kv), self.to_v(kv)
        scores = q @ k.transpose(-2, -1) / D ** 0.5
        if self.causal:
            n = scores.shape[-1]
            future = torch.ones(n, n, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        return self.to_out(scores.softmax(-1) @ v)


class Residual(nn.Module):
    def forward(self, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return out + residual


def feed_forward() -> nn.Module:
    return nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))


class Layers(nn.Module):
    """Blocks of kinds ``a`` (self-attention), ``c`` (cross-attention), ``f`` (feed-forward)."""

    def __init__(self, kinds: str, causal: list[bool]) -> None:
        super().__init__()
        self.kinds = kinds
        masks = iter(causal)
        self.layers = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(D),
                           Attention(next(masks)) if kind == "a" else
                           Attention() if kind == "c" else feed_forward(),
                           Residual()])
            for kind in kinds)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for kind, (norm, block, residual) in zip(self.kinds, self.layers, strict=True):
            h = norm(x)
            out = block(h, context) if kind == "c" else block(h)
            x = residual(out, x)
        return x


class Model(nn.Module):
    def __init__(self, drop_mask: bool) -> None:
        super().__init__()
        self.src, self.tgt = nn.Embedding(V, D), nn.Embedding(V + 1, D)
        self.pos = nn.Parameter(torch.randn(T, D) * 0.02)
        self.encoder = Layers("afaf", [False, False])
        self.decoder = Layers("acfacf", [True, not drop_mask])
        self.head = nn.Linear(D, V)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        memory = self.encoder(self.src(src))
        return self.head(self.decoder(self.tgt(tgt) + self.pos[: tgt.shape[1]], memory))


def main() -> None:
    args = parse({"--drop-mask": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    model = Model(args.drop_mask)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(args.steps):
        src = torch.randint(0, V, (B, S))
        start = torch.full((B, 1), V)  # the start token
        tgt = torch.cat([start, src[:, : T - 1]], 1)  # copy the source's first tokens
        loss = F.cross_entropy(model(src, tgt).reshape(-1, V), src[:, :T].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
