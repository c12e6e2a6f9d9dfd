"""An embedding with sparse gradients (``nn.Embedding(sparse=True)``) under SparseAdam, beside a
dense head under Adam: the two optimizers a recommendation or word2vec-style script uses."""

import torch
from common import parse, save
from torch import nn


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    emb = nn.Embedding(100, 16, sparse=True)
    head = nn.Linear(16, 5)
    sparse_opt = torch.optim.SparseAdam(list(emb.parameters()), lr=1e-2)
    dense_opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(args.steps):
        x = torch.randint(0, 100, (32,))
        loss = nn.functional.cross_entropy(head(emb(x)), x % 5)
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
        losses.append(loss.item())
    save(args.out, losses, emb, head)


if __name__ == "__main__":
    main()
