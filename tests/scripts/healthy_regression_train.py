"""A healthy linear regression (SGD well inside its stability limit): every parameter needs its
learning rate, so lowering one's slows training and the loss ends higher."""

import torch
from common import parse, save
from torch import nn


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    x = torch.randn(512, 8)
    y = x @ torch.randn(8, 1) + 0.01 * torch.randn(512, 1)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses: list[float] = []
    for _ in range(args.steps):
        idx = torch.randint(0, 512, (64,))
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
