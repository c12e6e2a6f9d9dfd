"""Training in phases: Adam for --phase1 steps, then a fine-tune with a new SGD optimizer built
after the first phase ended, on targets at another scale (so the second phase starts from a
higher loss than the first ended at).

--nan-at K: in the second phase's K-th step module `scale` multiplies its input by inf.
"""

import torch
from common import parse, save
from torch import nn


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.factor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.scale = Scale()
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.scale(torch.tanh(self.fc1(x))))


def train(model: Net, opt: torch.optim.Optimizer, steps: int, target_scale: float,
          nan_at: int, losses: list[float]) -> None:
    for step in range(1, steps + 1):
        if step == nan_at:
            model.scale.factor = float("inf")
        x = torch.randn(32, 4)
        y = target_scale * x.sum(1, keepdim=True)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())


def main() -> None:
    args = parse({"--phase1": {"type": int, "default": 40},
                  "--phase2": {"type": int, "default": 40},
                  "--nan-at": {"type": int, "default": 0}})
    torch.manual_seed(args.seed)
    model = Net()
    losses: list[float] = []
    train(model, torch.optim.Adam(model.parameters(), lr=1e-2), args.phase1, 1.0, 0, losses)
    fine_tune = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    train(model, fine_tune, args.phase2, 3.0, args.nan_at, losses)
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
