"""A two-layer MLP trained through ``torch.compile``: under hfault it must train exactly as
without it. ``--backend``: ``aot_eager`` compiles quickly, ``inductor`` is what users get,
``none`` does not compile. ``--how``: ``model`` (``model = torch.compile(model)``), ``layer``
(``fc2`` compiled in place inside the plain model), ``method`` (``model.compile()``) or
``function`` (a compiled function calls the model: no hook of the model runs outside it)."""

import torch
from common import parse, save
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def main() -> None:
    args = parse({"--backend": {"default": "aot_eager"},
                  "--how": {"default": "model",
                            "choices": ["model", "layer", "method", "function"]}})
    torch.manual_seed(args.seed)
    model: nn.Module = MLP()
    forward = model
    if args.backend == "none":
        pass
    elif args.how == "model":
        model = forward = torch.compile(model, backend=args.backend)
    elif args.how == "layer":
        model.fc2 = torch.compile(model.fc2, backend=args.backend)
    elif args.how == "method":
        model.compile(backend=args.backend)
    else:
        forward = torch.compile(lambda x: model(x), backend=args.backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(32, 8)
    y = torch.randint(0, 3, (32,))
    losses: list[float] = []
    for _ in range(args.steps):
        loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
