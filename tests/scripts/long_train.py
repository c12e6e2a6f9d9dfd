"""A long run of a tiny model (one weight, one bias): what a 500k-step report's size is made of."""

import torch
from common import parse, save
from torch import nn


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 1)
    y = 3 * x + 1
    losses: list[float] = []
    for _ in range(args.steps):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
