"""nn.MultiheadAttention: saves the script's own in_proj gradient at step 1 to check the slices."""

import torch
from common import parse, save
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        out, _ = self.attn(h, h, h, need_weights=True)
        return self.head(out.mean(1))


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, first_grad = [], None
    for _ in range(args.steps):
        x = torch.randint(0, 12, (8, 5))
        loss = nn.functional.cross_entropy(model(x), x[:, 0] % 2)
        opt.zero_grad()
        loss.backward()
        if first_grad is None:
            attn = model.attn
            first_grad = (attn.in_proj_weight.grad.clone(), attn.in_proj_bias.grad.clone())
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model, first_grad=first_grad)


if __name__ == "__main__":
    main()
