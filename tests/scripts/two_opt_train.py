"""Two optimizers: one model split over Adam and SGD, or (--two-models) a generator/critic pair."""

import torch
from common import parse, save
from torch import nn


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def main() -> None:
    args = parse({"--two-models": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    gen, critic = Generator(), Critic()
    if args.two_models:
        opt_a = torch.optim.Adam(gen.parameters(), lr=1e-3)
        opt_b = torch.optim.SGD(critic.parameters(), lr=1e-2)
        modules = (gen, critic)
    else:
        model = nn.Sequential(gen, critic)
        opt_a = torch.optim.Adam(model[0].parameters(), lr=1e-3)
        opt_b = torch.optim.SGD(model[1].parameters(), lr=1e-2)
        modules = (model,)
    losses = []
    for _ in range(args.steps):
        z = torch.randn(16, 4)
        out = critic(gen(z)) if args.two_models else modules[0](z)
        loss = ((out - z.sum(1, keepdim=True)) ** 2).mean()
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss.backward()
        opt_a.step()
        opt_b.step()
        losses.append(loss.item())
    save(args.out, losses, *modules)


if __name__ == "__main__":
    main()
