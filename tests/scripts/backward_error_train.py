"""The script's own mistakes that surface inside backward (so inside hfault's backward hook):
--mode twice: backward through the same graph a second time (torch raises);
--mode function: a custom autograd.Function whose backward raises."""

import torch
from common import parse
from torch import nn


class Fragile(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x * 2

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        raise ValueError("Fragile.backward is not implemented for this dtype")


def main() -> None:
    args = parse({"--mode": {"default": "twice"}})
    torch.manual_seed(args.seed)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, args.steps + 1):
        out = model(torch.randn(4, 3))
        if args.mode == "function" and step == 3:
            out = Fragile.apply(out)
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if args.mode == "twice" and step == 3:
            loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
