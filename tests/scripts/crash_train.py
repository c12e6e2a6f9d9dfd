"""Raises in user code at step 3 (after two good optimizer steps)."""

import torch
from torch import nn


def load_batch(step: int) -> torch.Tensor:
    if step == 3:
        raise ValueError("corrupt shard 7")
    return torch.randn(4, 3)


def main() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 10):
        x = load_batch(step)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
