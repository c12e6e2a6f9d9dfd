"""A 3-layer causal decoder (SDPA) trained on a copy task, the logits flattened into the loss
(batch × positions rows, as nanoGPT does); ``--swap-layer K`` hands block K's attention its input
as (positions, batch, d): the block was written for sequence-first tensors, so it attends over the
samples of the batch. ``--layers N``: N blocks (a one-layer model has no other layer to compare
with)."""

import torch
from common import parse, save
from torch import nn
from torch.nn import functional as F

B, T, D, V, H = 8, 12, 32, 16, 4


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, H, D // H).transpose(1, 2) for z in self.qkv(x).split(D, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, D))


class Block(nn.Module):
    def __init__(self, swap: bool) -> None:
        super().__init__()
        self.swap = swap
        self.ln = nn.LayerNorm(D)
        self.attn = Attention()
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        # the bug: (B, T, D) handed over as (T, B, D)
        a = self.attn(h.transpose(0, 1)).transpose(0, 1) if self.swap else self.attn(h)
        x = x + a
        return x + self.mlp(x)


class Decoder(nn.Module):
    def __init__(self, swap_layer: int, layers: int = 3) -> None:
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        self.blocks = nn.ModuleList(Block(i == swap_layer) for i in range(layers))
        self.head = nn.Linear(D, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main() -> None:
    args = parse({"--swap-layer": {"type": int, "default": -1},
                  "--layers": {"type": int, "default": 3}})
    torch.manual_seed(args.seed)
    model = Decoder(args.swap_layer, args.layers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(args.steps):
        idx = torch.randint(0, V, (B, T))
        target = torch.roll(idx, 1, dims=1)  # predict the previous token
        logits = model(idx)
        loss = F.cross_entropy(logits.view(-1, V), target.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
