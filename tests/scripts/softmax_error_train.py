"""An attention module whose softmax raises in the script's own code on the first (measured)
step: a bad ``dim``. hfault's attention probe wraps softmax on measured steps; the error is still
the script's, not hfault's."""

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.query(x) @ self.key(x).transpose(-2, -1)
        weights = torch.softmax(scores, dim=3)  # the bug: scores have three dimensions
        return weights @ self.value(x)


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Attention(), nn.Flatten(), nn.Linear(4 * 8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(2, 4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
