"""nanoGPT's LR handling on a diverging regression: the script computes its own schedule and
assigns ``param_group["lr"]`` to every group before each step (overwriting any per-group LR)."""

import math

import torch
from common import parse, save
from torch import nn


def get_lr(it: int, steps: int) -> float:
    return 1.2 * (0.5 + 0.5 * math.cos(math.pi * it / (4 * steps)))


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.2)
    losses: list[float] = []
    for it in range(args.steps):
        lr = get_lr(it, args.steps)
        for param_group in opt.param_groups:
            param_group["lr"] = lr
        idx = torch.randint(0, 256, (64,))
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
