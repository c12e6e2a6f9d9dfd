"""A 4-layer causal decoder with one attention fault per layer (or none, ``--healthy``):
layer 0 multiplies its scores by √d instead of dividing (16× too sharp at d = 16), layer 1 lost
its causal mask, layer 2 normalizes over the queries (softmax dim=-2), layer 3 is right; the
positional embedding is frozen at its random initialization. ``--unmasked``: every layer right
but none masks the future (the mask lost in the class all layers share). ``--nll``: the loss as
``nll_loss`` of ``log_softmax`` outputs instead of ``cross_entropy``. ``--unshifted``: the
targets are the input tokens at their own position (the shift to the next token forgotten)."""

import math

import torch
from common import parse
from torch import nn
from torch.nn import functional as F

T, D, V = 12, 32, 16


class Attention(nn.Module):
    def __init__(self, scale_up: bool = False, causal: bool = True, dim: int = -1) -> None:
        super().__init__()
        self.scale_up, self.causal, self.dim = scale_up, causal, dim
        self.q_proj = nn.Linear(D, D)
        self.k_proj = nn.Linear(D, D)
        self.v_proj = nn.Linear(D, D)
        self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).tril())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        scale = math.sqrt(D) if self.scale_up else 1 / math.sqrt(D)
        scores = q @ k.transpose(-2, -1) * scale
        if self.causal:
            scores = scores.masked_fill(~self.mask, float("-inf"))
        return F.softmax(scores, dim=self.dim) @ v


class Block(nn.Module):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.attn = Attention(**kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class Decoder(nn.Module):
    def __init__(self, healthy: bool, unmasked: bool = False) -> None:
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        faults = [{}] * 4 if healthy else [{"scale_up": True}, {"causal": False}, {"dim": -2}, {}]
        if unmasked:
            faults, healthy = [{"causal": False}] * 4, True
        self.blocks = nn.ModuleList(Block(**f) for f in faults)
        self.head = nn.Linear(D, V)
        if not healthy:
            self.pos.requires_grad_(False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main() -> None:
    args = parse({"--healthy": {"action": "store_true"}, "--unmasked": {"action": "store_true"},
                  "--nll": {"action": "store_true"}, "--unshifted": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    model = Decoder(args.healthy, args.unmasked)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = torch.randint(0, V, (8, T + 1))
    for _ in range(args.steps):
        logits = model(data[:, :-1])
        scores = logits.reshape(-1, V)
        targets = (data[:, :-1] if args.unshifted else data[:, 1:]).reshape(-1)
        loss = (F.nll_loss(F.log_softmax(scores, -1), targets) if args.nll
                else F.cross_entropy(scores, targets))
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
