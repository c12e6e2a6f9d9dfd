"""A memory network: each hop scores a memory of slots with one query per sample
(``einsum("bd,bmd->bm")``, a (batch, slots) softmax) in a parameter-free ``Hop`` module that
nothing names attention; hfault finds it by what it computes. ``--bug`` multiplies hop 0's scores
by √d instead of dividing (32× too sharp at a width of 32)."""

import math

import torch
from common import parse, save
from torch import nn
from torch.nn import functional as F

M, D, ENTITIES, PLACES = 6, 32, 12, 8


class Hop(nn.Module):
    def __init__(self, wrong_scale: bool) -> None:
        super().__init__()
        self.scale = math.sqrt(D) if wrong_scale else 1 / math.sqrt(D)

    def forward(self, u: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(torch.einsum("bd,bmd->bm", u, keys) * self.scale, dim=-1)
        return u + torch.einsum("bm,bmd->bd", weights, values)


class MemoryNet(nn.Module):
    def __init__(self, bug: bool) -> None:
        super().__init__()
        self.entity = nn.Embedding(ENTITIES, D)
        self.place = nn.Embedding(PLACES, D)
        self.query = nn.Embedding(ENTITIES, D)
        self.hops = nn.ModuleList([Hop(bug), Hop(False), Hop(False)])
        self.answer = nn.Linear(D, PLACES)

    def forward(self, who: torch.Tensor, where: torch.Tensor, asked: torch.Tensor) -> torch.Tensor:
        keys = self.entity(who)
        values = self.place(where) + keys
        u = self.query(asked)
        for hop in self.hops:
            u = hop(u, keys, values)
        return self.answer(u)


def main() -> None:
    args = parse({"--bug": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    model = MemoryNet(args.bug)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(args.steps):
        who = torch.stack([torch.randperm(ENTITIES)[:M] for _ in range(32)])
        where = torch.randint(0, PLACES, (32, M))
        slot = torch.randint(0, M, (32,))
        asked = who[torch.arange(32), slot]
        loss = F.cross_entropy(model(who, where, asked), where[torch.arange(32), slot])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
