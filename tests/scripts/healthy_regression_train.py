"""A healthy linear regression (SGD well inside its stability limit): every parameter needs its
learning rate, so lowering one's slows training and the loss ends higher. ``--print-val K``
prints the loss on a held-out set every K steps, as training scripts do."""

import torch
from common import parse, save
from torch import nn


def main() -> None:
    args = parse({"--print-val": {"type": int, "default": 0}})
    torch.manual_seed(args.seed)
    x = torch.randn(512, 8)
    w = torch.randn(8, 1)
    y = x @ w + 0.01 * torch.randn(512, 1)
    x_val = torch.randn(128, 8)
    y_val = x_val @ w
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
        if args.print_val and len(losses) % args.print_val == 0:
            with torch.no_grad():
                val = nn.functional.mse_loss(model(x_val), y_val).item()
            print(f"step {len(losses)}: train loss {loss.item():.4f}, val loss {val:.4f}")
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
