"""Gradient accumulation over 4 micro-batches (loss/4), clip_grad_norm_, SGD with momentum."""

import torch
from common import parse, save
from torch import nn

MICRO = 4


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step_losses: list[float] = []
    for _ in range(args.steps):
        opt.zero_grad()
        total = 0.0
        for _ in range(MICRO):
            x = torch.randn(8, 8)
            loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean() / MICRO
            loss.backward()
            total += loss.item()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step_losses.append(total)
    save(args.out, step_losses, model)


if __name__ == "__main__":
    main()
