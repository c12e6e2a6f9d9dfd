"""Numerical faults at a known step and place.

--mode activation: module `temp` divides by a temperature that a schedule drives to 0 at --bad-step.
--mode grad: `gate` scales by sqrt(gate) with gate = 0: finite forward, infinite gradient.
--mode logexp: `gate` enters as log(gate).exp() with gate = 0 (log-space weights): finite forward,
  NaN gradient (0 * inf).
--clip: clip_grad_norm_ before the step; with a non-finite total norm it turns every gradient NaN.
"""

import torch
from common import parse, save
from torch import nn


class Temperature(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.t = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.t


class Net(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.temp = Temperature()
        self.fc2 = nn.Linear(8, 2)
        self.gate = nn.Parameter(torch.ones(8) if mode == "activation" else torch.zeros(8))
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.temp(self.fc1(x))
        if self.mode == "grad":
            h = h * torch.sqrt(self.gate) + h
        elif self.mode == "logexp":
            h = h * torch.log(self.gate).exp() + h
        return self.fc2(h)


def main() -> None:
    args = parse({"--mode": {"default": "activation"}, "--bad-step": {"type": int, "default": 5},
                  "--clip": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    model = Net(args.mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(1, args.steps + 1):
        if args.mode == "activation" and step >= args.bad_step:
            model.temp.t = 0.0
        x = torch.randn(8, 4)
        loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
        opt.zero_grad()
        loss.backward()
        if args.clip:
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
