"""A frozen embedding, a parameter no optimizer holds (updated by hand), and two param groups."""

import torch
from common import parse, save
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.embed.weight.requires_grad_(False)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.manual = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.embed(x).mean(1))) * self.manual)


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    model = Net()
    opt = torch.optim.Adam(
        [{"params": model.body.parameters()}, {"params": model.head.parameters(), "lr": 1e-2}],
        lr=1e-3,
    )
    losses = []
    for _ in range(args.steps):
        x = torch.randint(0, 10, (16, 4))
        loss = nn.functional.cross_entropy(model(x), x[:, 0] % 2)
        opt.zero_grad()
        model.manual.grad = None
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.manual -= 0.01 * model.manual.grad
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
