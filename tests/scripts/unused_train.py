"""Components that get no gradient: unused by design (``--mode pooler``: an output computed and
dropped; ``optional``: a parameter only some inputs would read), cut from the loss while their
values still feed it (``data``: a ``.data`` read; ``nograd``: a ``torch.no_grad()`` block;
``written``: the same, written into another tensor by index), or
a layer defined and left out of ``forward`` (``skipped``) or whose result is dropped inside the
forward that computed it (``dropped``)."""

import torch
import torch.nn.functional as F
from common import parse, save
from torch import nn


class Pooler(nn.Module):
    """BertModel's pooler: returns tanh(dense(first position)); heads may not read it."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(6, 6)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h))


class Net(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.body = nn.Linear(6, 6)
        self.gate = nn.Linear(6, 6)
        self.segment = nn.Parameter(torch.zeros(2, 6))
        self.pool = Pooler()
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.body(x))
        if segments is not None:
            h = h + self.segment[segments]
        pooled = self.pool(h)  # an output of a sub-model: the pooler mode's head ignores it
        if self.mode == "pooler":
            return self.head(h)
        if self.mode == "skipped":
            return self.head(h + pooled)  # self.gate defined, never called
        if self.mode == "dropped":
            gated = torch.sigmoid(self.gate(h)) * h  # noqa: F841  computed, then h used
            return self.head(h + pooled)
        if self.mode == "data":
            gate = torch.sigmoid(F.linear(h, self.gate.weight.data, self.gate.bias.data))
        elif self.mode == "nograd":
            with torch.no_grad():
                gate = torch.sigmoid(self.gate(h))
        elif self.mode == "written":
            gate = torch.ones_like(h)
            with torch.no_grad():  # written into another tensor by index
                gate[:, :3] = torch.sigmoid(self.gate(h))[:, :3]
        else:
            gate = torch.sigmoid(self.gate(h))
        return self.head(h * gate + pooled)


def main() -> None:
    args = parse({"--mode": {"default": "optional"}})
    torch.manual_seed(args.seed)
    model = Net(args.mode)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(args.steps):
        x = torch.randn(16, 6)
        loss = F.cross_entropy(model(x), (x[:, 0] > 0).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
