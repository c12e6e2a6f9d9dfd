"""``optimizer.step(closure)``: the closure runs forward and backward inside ``step``
(``--optimizer lbfgs`` calls it several times per step for its line search; ``sgd`` once;
``--no-closure`` trains the same SGD as an ordinary loop)."""

import torch
from common import parse, save
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def main() -> None:
    args = parse({"--optimizer": {"default": "sgd", "choices": ["sgd", "lbfgs"]},
                  "--no-closure": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    model = MLP()
    if args.optimizer == "lbfgs":
        opt: torch.optim.Optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(24, 6)
    y = torch.randint(0, 2, (24,))
    losses: list[float] = []
    for _ in range(args.steps):
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if args.no_closure:  # the same training as an ordinary loop
            loss = closure()
            opt.step()
        else:
            loss = opt.step(closure)
        losses.append(float(loss.detach()))
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
