"""A graph attention network classifying the nodes of random graphs (dense batched adjacency).

The original two-layer GAT layout written by hand: each layer a linear map, per-head source and
destination attention vectors, LeakyReLU(a_src . Wh_i + a_dst . Wh_j) scores with non-edges
``masked_fill``-ed to -inf and ``F.softmax`` over each node's neighbours (self-loop included);
8 concatenated hidden heads and ELU, then an output layer whose averaged heads give the class
logits. Node-level ``F.cross_entropy``. SGD with momentum and weight decay, a MultiStepLR schedule
and clip_grad_value_. Each node has a colour, some nodes are marked and carry a priority; a node's
label is the colour with the largest total priority among its marked neighbours (its own colour
when none is marked), so the layers must learn which neighbours to attend to.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

COLOURS = 5
NODES = 20
DEGREE = (2, 6)  # random extra edges per node (undirected, so degrees end up higher)
MARK_RATE = 0.35
FEATURES = COLOURS + 2  # one-hot colour, marked bit, priority (0 when unmarked)


def make_batch(gen, graphs):
    """(features (graphs, NODES, FEATURES), adjacency (graphs, NODES, NODES) bool with
    self-loops, labels (graphs, NODES))."""
    colour = torch.randint(0, COLOURS, (graphs, NODES), generator=gen)
    marked = torch.rand(graphs, NODES, generator=gen) < MARK_RATE
    priority = torch.rand(graphs, NODES, generator=gen) * marked
    adj = torch.zeros(graphs, NODES, NODES, dtype=torch.bool)
    for g in range(graphs):
        for i in range(NODES):
            k = int(torch.randint(DEGREE[0], DEGREE[1] + 1, (1,), generator=gen))
            others = torch.randperm(NODES - 1, generator=gen)[:k]
            others = others + (others >= i).long()
            adj[g, i, others] = True
    adj = adj | adj.transpose(1, 2)
    neighbour = adj.float()  # without the self-loop for the label
    votes = torch.einsum("gij,gjc->gic", neighbour,
                         F.one_hot(colour, COLOURS).float() * priority[..., None])
    labels = torch.where(votes.sum(-1) > 0, votes.argmax(-1), colour)
    adj = adj | torch.eye(NODES, dtype=torch.bool)
    features = torch.cat([F.one_hot(colour, COLOURS).float(), marked[..., None].float(),
                          priority[..., None]], -1)
    return features, adj, labels


class GraphAttention(nn.Module):
    """One GAT layer: ``heads`` attention heads over each node's neighbours (self included),
    concatenated or averaged."""

    def __init__(self, in_dim, out_dim, heads, concat=True):
        super().__init__()
        self.heads, self.out_dim, self.concat = heads, out_dim, concat
        self.linear = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, out_dim))
        self.bias = nn.Parameter(torch.zeros(heads * out_dim if concat else out_dim))
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def forward(self, h, adj):
        G, N, _ = h.shape
        wh = self.linear(h).view(G, N, self.heads, self.out_dim).transpose(1, 2)  # G,H,N,d
        src = (wh * self.att_src[None, :, None, :]).sum(-1)  # G,H,N
        dst = (wh * self.att_dst[None, :, None, :]).sum(-1)
        scores = F.leaky_relu(src[..., :, None] + dst[..., None, :], 0.2)  # i attends to j
        scores = scores.masked_fill(~adj[:, None], float("-inf"))
        alpha = F.softmax(scores, dim=-1)
        out = alpha @ wh  # G,H,N,d
        if self.concat:
            return out.transpose(1, 2).reshape(G, N, -1) + self.bias
        return out.mean(1) + self.bias


class GAT(nn.Module):
    """The original two-layer GAT layout: 8 concatenated hidden heads, ELU, an averaged output
    layer giving the class logits."""

    def __init__(self, hidden=8, heads=8, out_heads=2):
        super().__init__()
        self.hidden = GraphAttention(FEATURES, hidden, heads)
        self.output = GraphAttention(hidden * heads, COLOURS, out_heads, concat=False)

    def forward(self, features, adj):
        return self.output(F.elu(self.hidden(features, adj)), adj)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--graphs", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(31337 + args.seed)
    val_batches = [make_batch(gen, 64) for _ in range(2)]

    model = GAT()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                                weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[args.steps * 2 // 3, args.steps * 9 // 10], gamma=0.3)

    history = []
    for step in range(args.steps):
        model.train()
        features, adj, labels = make_batch(gen, args.graphs)
        logits = model(features, adj)
        loss = F.cross_entropy(logits.reshape(-1, COLOURS), labels.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}: loss {sum(history[-25:]) / 25:.4f}")

    model.eval()
    with torch.no_grad():
        losses, correct, total = [], 0, 0
        for features, adj, labels in val_batches:
            logits = model(features, adj)
            losses.append(F.cross_entropy(logits.reshape(-1, COLOURS), labels.reshape(-1)).item())
            correct += (logits.argmax(-1) == labels).sum().item()
            total += labels.numel()
    val_loss = sum(losses) / len(losses)
    print(f"eval loss {val_loss:.4f} accuracy {correct / total:.3f}")

    tail = max(1, args.steps // 10)
    result = {"first_loss": history[0], "train_loss": sum(history[-tail:]) / tail,
              "val_loss": val_loss}
    result = {k: (v if math.isfinite(v) else "nan") for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
