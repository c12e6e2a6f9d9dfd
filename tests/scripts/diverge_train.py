"""An MLP regression trained by SGD with momentum; a learning rate large enough (``--lr 0.5``)
makes the loss climb by orders of magnitude for a few steps, then overflow to inf and NaN."""

import torch
from common import parse, save
from torch import nn


def main() -> None:
    args = parse({"--lr": {"type": float, "default": 0.01}})
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    w = torch.randn(16, 4) / 4
    losses: list[float] = []
    for _ in range(args.steps):
        x = torch.randn(32, 16)
        loss = nn.functional.mse_loss(model(x), torch.sin(x @ w))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
