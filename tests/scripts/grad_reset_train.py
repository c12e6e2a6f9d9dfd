"""How gradients are reset between steps: ``--mode reset`` (zero_grad(set_to_none=False) before
backward), ``never`` (zero_grad forgotten), ``accumulate`` (3 backward calls per step, reset after
the step), ``gan`` (two models, two optimizers; the second loss backpropagates through the first
model too, whose gradients are reset only before its own backward)."""

import torch
from common import parse
from torch import nn
from torch.nn import functional as F


def main() -> None:
    args = parse({"--mode": {"default": "reset"}})
    torch.manual_seed(args.seed)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    a, b = nn.Linear(8, 8), nn.Linear(8, 2)
    if args.mode == "gan":
        opt_a = torch.optim.SGD(a.parameters(), lr=0.01)
        opt_b = torch.optim.SGD(b.parameters(), lr=0.01)
        for _ in range(args.steps):
            opt_a.zero_grad()
            F.cross_entropy(b(torch.tanh(a(x))), y).backward()
            opt_a.step()
            opt_b.zero_grad()
            F.cross_entropy(b(torch.tanh(a(x))), 1 - y).backward()  # also adds into a's .grad
            opt_b.step()
        return
    model = nn.Sequential(a, nn.Tanh(), b)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(args.steps):
        if args.mode == "reset":
            opt.zero_grad(set_to_none=False)
        for chunk in (torch.arange(3) if args.mode == "accumulate" else torch.arange(1)):
            F.cross_entropy(model(x[chunk::3] if args.mode == "accumulate" else x),
                            y[chunk::3] if args.mode == "accumulate" else y).backward()
        opt.step()
        if args.mode == "accumulate":
            opt.zero_grad()


if __name__ == "__main__":
    main()
