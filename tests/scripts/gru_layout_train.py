"""A sequence classifier: embedding, a batch-first GRU, a second GRU over its outputs, mean
pooling, a linear head. --swap hands the first GRU (positions, batch, features), the classic
layout bug (it then recurs across the samples of the batch); --flat flattens the loss over
positions (a per-position tagger), so the loss does not give the batch size; --bn adds a
BatchNorm1d over the features (mixes samples by design, through batch statistics)."""

import torch
import torch.nn.functional as F
from common import parse, save
from torch import nn


class BatchNormFeatures(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, positions, d)
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


class Tagger(nn.Module):
    def __init__(self, swap: bool, bn: bool, vocab: int = 20, d: int = 16, classes: int = 3):
        super().__init__()
        self.swap = swap
        self.embed = nn.Embedding(vocab, d)
        self.norm = BatchNormFeatures(d) if bn else nn.Identity()
        self.rnn = nn.GRU(d, d, batch_first=True)
        self.rnn2 = nn.GRU(d, d, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(tokens))
        if self.swap:
            h, _ = self.rnn(x.transpose(0, 1))
            h = h.transpose(0, 1)
        else:
            h, _ = self.rnn(x)
        h, _ = self.rnn2(h)
        return self.head(h)  # (batch, positions, classes)


def main() -> None:
    args = parse({"--swap": {"action": "store_true"}, "--flat": {"action": "store_true"},
                  "--bn": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    model = Tagger(args.swap, args.bn)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(args.steps):
        tokens = torch.randint(0, 20, (8, 12))
        target = tokens % 3
        logits = model(tokens)
        if args.flat:
            loss = F.cross_entropy(logits.reshape(-1, 3), target.reshape(-1))
        else:  # per sample: the mean over positions of each sample's log-likelihood
            loss = F.cross_entropy(logits.mean(1), target[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
