"""An MLP trained with SGD and, with --clip C, clip_grad_norm_(max_norm=C) over micro-batches
(--accum K): the script records the total norm clip_grad_norm_ returned at each step."""

import torch
from common import parse, save
from torch import nn


def main() -> None:
    args = parse({"--clip": {"type": float, "default": None},
                  "--lr": {"type": float, "default": 0.5},
                  "--accum": {"type": int, "default": 1}})
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    losses, norms = [], []
    for _ in range(args.steps):
        opt.zero_grad()
        total = 0.0
        for xb, yb in zip(x.chunk(args.accum), y.chunk(args.accum), strict=True):
            loss = nn.functional.cross_entropy(model(xb), yb) / args.accum
            loss.backward()
            total += loss.item()
        if args.clip is not None:
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), args.clip)))
        opt.step()
        losses.append(total)
    save(args.out, losses, model, norms=norms)


if __name__ == "__main__":
    main()
