"""What the loss is fed: --mode logits_ce (right), log_softmax_nll (right), softmax_ce (softmax
before cross_entropy), softmax_nll (nll_loss without the log), module_ce (nn.CrossEntropyLoss on
softmax outputs), two_heads (softmax before cross_entropy in a model with a class head and a box
head that runs after it, as in a detector)."""

import torch
import torch.nn.functional as F
from common import parse, save
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.class_head = nn.Linear(8, 3)
        self.box_head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.class_head(h), self.box_head(h)  # the box head runs last


def main() -> None:
    args = parse({"--mode": {"default": "logits_ce"}})
    torch.manual_seed(args.seed)
    model = TwoHeads() if args.mode == "two_heads" else nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for _ in range(args.steps):
        x = torch.randn(16, 4)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        if args.mode == "two_heads":
            z, box = model(x)
            loss = F.cross_entropy(z.softmax(dim=-1), y) + F.mse_loss(box, x[:, :2])
        else:
            z = model(x)
        if args.mode == "two_heads":
            pass
        elif args.mode == "logits_ce":
            loss = F.cross_entropy(z, y)
        elif args.mode == "log_softmax_nll":
            loss = F.nll_loss(F.log_softmax(z, dim=-1), y)
        elif args.mode == "softmax_ce":
            loss = F.cross_entropy(z.softmax(dim=-1), y)
        elif args.mode == "softmax_nll":
            loss = F.nll_loss(z.softmax(dim=-1), y)
        else:
            loss = criterion(torch.softmax(z, dim=1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
