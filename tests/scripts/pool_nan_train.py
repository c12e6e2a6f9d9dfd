"""A NaN in the output of a module that owns no parameter directly: `pool` scores the positions
with its child `score` and takes a masked softmax over them; a fully masked row (from --bad-step
on) makes the softmax 0/0.

--sanity-check: one forward and backward of a batch with a fully masked row before the optimizer
is built, raising when its loss is not finite (a common pre-training check).
"""

import torch
from common import parse, save
from torch import nn


class AttnPool(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.score = nn.Linear(width, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf"))
        return (torch.softmax(scores, dim=-1).unsqueeze(-1) * h).sum(1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.pool = AttnPool(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.tanh(self.embed(x)), mask))


def batch(masked_row: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(8, 5, 4)
    mask = torch.ones(8, 5, dtype=torch.bool)
    if masked_row:
        mask[0] = False
    return x, mask, (x[:, 0, 0] > 0).long()


def main() -> None:
    args = parse({"--bad-step": {"type": int, "default": 3},
                  "--sanity-check": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    model = Net()
    if args.sanity_check:
        x, mask, y = batch(masked_row=True)
        loss = nn.functional.cross_entropy(model(x, mask), y)
        loss.backward()
        if not torch.isfinite(loss):
            raise FloatingPointError("the loss of the untrained model is not finite")
        model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(1, args.steps + 1):
        x, mask, y = batch(masked_row=step >= args.bad_step)
        loss = nn.functional.cross_entropy(model(x, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
