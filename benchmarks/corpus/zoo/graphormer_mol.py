"""Graphormer (Ying et al. 2021) regressing a structural property of synthetic molecule graphs.

Graphs: 6-16 atoms of 5 types, a random spanning tree of bonds (at most 4 per atom) plus up to
two ring-closing bonds; a quarter of the molecules also carry a separate 1-2 atom fragment
(a counter-ion), so some atom pairs are unreachable. All-pairs shortest-path distances come from
a batched Floyd-Warshall in the data generator. Graphs are padded to 16 nodes with a node mask.

Model, written out here: atom-type embedding + degree (centrality) embedding, a virtual graph
token prepended to the nodes, and in every attention head an additive bias looked up from a
learned embedding of the shortest-path distance (one table for the whole model, its own index
for graph-token pairs). Four pre-LN layers with their own q/k/v projections, einsum scores,
``masked_fill(-inf)`` on padding and unreachable pairs, ``F.softmax``; a GELU feed-forward. The
graph token's final state (after a LayerNorm) goes through a linear head.

Target: a fixed weight per pair of atom types, summed over bonded atom pairs minus the same sum
over pairs two bonds apart, divided by the number of atoms and standardised with the training
set's mean and std (the atom composition alone explains almost none of it).

Loss ``F.l1_loss``; ``torch.optim.NAdam`` under ``OneCycleLR`` (peak = the optimizer's learning
rate per group, linear annealing, ending at a twentieth of the peak), ``clip_grad_norm_`` at 1.0.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_NODES = 16
ATOM_TYPES = 5
MAX_DEGREE = 5
MAX_DIST = 6  # distances above are clipped to it
UNREACHABLE = MAX_DIST + 1  # index for unreachable and padded pairs (masked anyway)
VIRTUAL = MAX_DIST + 2  # index for pairs with the graph token
N_TRAIN, N_VAL = 2048, 256

CFG = dict(dim=48, heads=4, layers=4, ffn=96, batch=32, steps=250, lr=4e-3, clip=1.0)


# ---------------------------------------------------------------------------------- graphs
def random_molecules(count, gen):
    """Atom types (count, 16) with -1 on padding, adjacency (count, 16, 16) and atom counts."""
    atoms = torch.full((count, MAX_NODES), -1, dtype=torch.long)
    adj = torch.zeros(count, MAX_NODES, MAX_NODES, dtype=torch.bool)
    sizes = torch.randint(6, MAX_NODES + 1, (count,), generator=gen)
    type_probs = torch.tensor([0.45, 0.2, 0.2, 0.1, 0.05])
    for g in range(count):
        n = int(sizes[g])
        atoms[g, :n] = torch.multinomial(type_probs, n, replacement=True, generator=gen)
        fragment = int(torch.randint(1, 3, (1,), generator=gen)) if (
            torch.rand(1, generator=gen).item() < 0.25) else 0
        main = n - fragment
        degree = [0] * n
        for i in range(1, n):
            lo = 0 if i < main else main
            if i == lo:
                continue  # first atom of the fragment starts a new component
            choices = [j for j in range(lo, i) if degree[j] < 4] or list(range(lo, i))
            j = choices[int(torch.randint(0, len(choices), (1,), generator=gen))]
            adj[g, i, j] = adj[g, j, i] = True
            degree[i] += 1
            degree[j] += 1
        for _ in range(int(torch.randint(0, 3, (1,), generator=gen))):
            i, j = torch.randint(0, main, (2,), generator=gen).tolist()
            if i != j and degree[i] < 4 and degree[j] < 4 and not adj[g, i, j]:
                adj[g, i, j] = adj[g, j, i] = True
                degree[i] += 1
                degree[j] += 1
    return atoms, adj, sizes


def shortest_paths(adj):
    """Batched Floyd-Warshall: (B, N, N) float distances, inf where unreachable."""
    n = adj.shape[-1]
    dist = torch.full(adj.shape, math.inf)
    dist[adj] = 1.0
    dist[:, torch.arange(n), torch.arange(n)] = 0.0
    for k in range(n):
        dist = torch.minimum(dist, dist[:, :, k:k + 1] + dist[:, k:k + 1, :])
    return dist


PAIR_WEIGHTS = torch.randn(ATOM_TYPES, ATOM_TYPES, generator=torch.Generator().manual_seed(3))
PAIR_WEIGHTS = (PAIR_WEIGHTS + PAIR_WEIGHTS.T) / 2


def pair_property(atoms, dist, sizes):
    """Per atom: type-pair weights summed over bonded pairs minus those of pairs two bonds
    apart (the atom-type composition alone says almost nothing about it)."""
    real = atoms >= 0
    types = atoms.clamp(min=0)
    w = PAIR_WEIGHTS[types[:, :, None], types[:, None, :]] * real[:, :, None] * real[:, None, :]
    bonded = (w * (dist == 1)).sum(dim=(1, 2))
    two_apart = (w * (dist == 2)).sum(dim=(1, 2))
    return (bonded - two_apart) / 2 / sizes


def featurize(atoms, adj, dist):
    """Model inputs: atom types, degrees, distance indices (with the graph token), masks."""
    b = atoms.shape[0]
    real = atoms >= 0
    degree = adj.sum(-1).clamp(max=MAX_DEGREE)
    spd = dist.clamp(max=MAX_DIST).long()
    spd[~torch.isfinite(dist)] = UNREACHABLE
    reach = torch.isfinite(dist) & real[:, :, None] & real[:, None, :]
    n = MAX_NODES + 1
    index = torch.full((b, n, n), VIRTUAL, dtype=torch.long)
    index[:, 1:, 1:] = spd
    allowed = torch.zeros(b, n, n, dtype=torch.bool)
    allowed[:, 1:, 1:] = reach
    allowed[:, 0, 0] = True
    allowed[:, 0, 1:] = real
    allowed[:, 1:, 0] = True  # every row (padding too) sees the graph token
    return atoms.clamp(min=0), degree, index, allowed, real


def make_dataset(count, gen):
    atoms, adj, sizes = random_molecules(count, gen)
    dist = shortest_paths(adj)
    target = pair_property(atoms, dist, sizes.float())
    return (*featurize(atoms, adj, dist), target)


# ---------------------------------------------------------------------------------- model
class GraphAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x, bias, allowed):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.dh)
        k = self.k_proj(x).view(b, n, self.heads, self.dh)
        v = self.v_proj(x).view(b, n, self.heads, self.dh)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(self.dh) + bias
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        weights = F.softmax(scores, dim=-1)
        out = torch.einsum("bhij,bjhd->bihd", weights, v).reshape(b, n, -1)
        return self.out_proj(out)


class GraphormerLayer(nn.Module):
    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = GraphAttention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))

    def forward(self, x, bias, allowed):
        x = x + self.attn(self.attn_norm(x), bias, allowed)
        return x + self.ffn(self.ffn_norm(x))


class Graphormer(nn.Module):
    def __init__(self, dim, heads, layers, ffn):
        super().__init__()
        self.atom_emb = nn.Embedding(ATOM_TYPES, dim)
        self.degree_emb = nn.Embedding(MAX_DEGREE + 1, dim)
        self.graph_token = nn.Embedding(1, dim)
        self.spatial_bias = nn.Embedding(VIRTUAL + 1, heads)
        self.layers = nn.ModuleList([GraphormerLayer(dim, heads, ffn) for _ in range(layers)])
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, atoms, degree, spd_index, allowed, real):
        nodes = (self.atom_emb(atoms) + self.degree_emb(degree)) * real[..., None]
        token = self.graph_token.weight.expand(atoms.shape[0], 1, -1)
        x = torch.cat([token, nodes], dim=1)
        bias = self.spatial_bias(spd_index).permute(0, 3, 1, 2)  # (b, heads, n, n)
        for layer in self.layers:
            x = layer(x, bias, allowed)
        return self.head(self.final_norm(x[:, 0])).squeeze(-1)


def number(x):
    return x if math.isfinite(x) else "nan"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=CFG["steps"])
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(31 + args.seed)
    *train_x, train_y = make_dataset(N_TRAIN, gen)
    *val_x, val_y = make_dataset(N_VAL, gen)
    mean, std = train_y.mean(), train_y.std()
    train_y, val_y = (train_y - mean) / std, (val_y - mean) / std

    model = Graphormer(CFG["dim"], CFG["heads"], CFG["layers"], CFG["ffn"])
    optimizer = torch.optim.NAdam(model.parameters(), lr=CFG["lr"], weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=args.steps, pct_start=0.2, anneal_strategy="linear",
        div_factor=10.0, final_div_factor=2.0)

    losses = []
    for step in range(args.steps):
        model.train()
        idx = torch.randint(0, N_TRAIN, (CFG["batch"],), generator=gen)
        pred = model(*(t[idx] for t in train_x))
        loss = F.l1_loss(pred, train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CFG["clip"])
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:03d}  l1 {losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        val_loss = F.l1_loss(model(*val_x), val_y).item()
    print(f"val l1 {val_loss:.4f} (predicting the mean: {val_y.abs().mean().item():.4f})")

    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({"first_loss": number(losses[0]),
                                         "train_loss": number(sum(losses[-tail:]) / tail),
                                         "val_loss": number(val_loss)}))


if __name__ == "__main__":
    main()
