"""Pointer network (Vinyals et al. 2015) learning to sort sets of 2-D points.

Each set is 8 points in [-1, 1]^2; the target is the permutation that sorts them by their
distance to the set's first point (the anchor, always first itself), so an element's key
depends on the set and the encoder has to carry the anchor along.

The output distribution at each decoding step IS an attention: additive (Bahdanau) scores
``v . tanh(W_ref e_j + W_q q)`` over the encoder states e_j are the logits over the input
positions to point at. Positions already pointed at are masked out with ``masked_fill(-inf)``.

- embedding: each point through a small tanh MLP and a LayerNorm
- encoder: a single-layer ``nn.LSTM`` over the points in input order
- decoder: an ``nn.LSTMCell`` started from the encoder's final state; its input is the
  embedding of the element chosen at the previous step (teacher forcing: the right one), a
  learned start vector at step 0
- one glimpse (Bello et al. 2016): an additive attention with softmax over the remaining
  positions turns the decoder state into a context vector, which queries the pointer
- loss: ``F.cross_entropy`` of the pointer logits against the position of the next point in
  sorted order, averaged over the decoding steps

Adagrad with a step-decay LR schedule (StepLR) and gradient-norm clipping at 2.0.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

SET_SIZE = 8
POINT_DIM = 2
HIDDEN = 64
BATCH = 64
LR = 0.05
LR_STEP, LR_GAMMA = 60, 0.5
CLIP_NORM = 2.0


class NumberEmbedding(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.fc1 = nn.Linear(POINT_DIM, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x):
        return self.norm(self.fc2(torch.tanh(self.fc1(x))))


class AdditiveAttention(nn.Module):
    """Scores v . tanh(W_ref ref_j + W_q query) over the positions j of ref, chosen ones -inf."""

    def __init__(self, hidden):
        super().__init__()
        self.W_ref = nn.Linear(hidden, hidden, bias=False)
        self.W_q = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def scores(self, ref, query, chosen):
        u = self.v(torch.tanh(self.W_ref(ref) + self.W_q(query)[:, None, :])).squeeze(-1)
        return u.masked_fill(chosen, float("-inf"))


class Glimpse(AdditiveAttention):
    def forward(self, ref, query, chosen):
        weights = F.softmax(self.scores(ref, query, chosen), dim=-1)
        return torch.bmm(weights[:, None, :], ref).squeeze(1)


class Pointer(AdditiveAttention):
    def forward(self, ref, query, chosen):
        return self.scores(ref, query, chosen)  # the logits over input positions


class PointerNet(nn.Module):
    def __init__(self, hidden=HIDDEN):
        super().__init__()
        self.embed = NumberEmbedding(hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.decoder = nn.LSTMCell(hidden, hidden)
        self.dec_start = nn.Parameter(torch.empty(hidden).uniform_(-0.1, 0.1))
        self.glimpse = Glimpse(hidden)
        self.pointer = Pointer(hidden)

    def forward(self, points, order):
        """Teacher-forced pointer logits (B, N steps, N positions) for the target ``order``."""
        B, N = points.shape[:2]
        emb = self.embed(points)
        enc, (h, c) = self.encoder(emb)
        h, c = h[-1], c[-1]
        chosen = torch.zeros(B, N, dtype=torch.bool, device=points.device)
        dec_in = self.dec_start.expand(B, -1)
        rows = torch.arange(B, device=points.device)
        logits = []
        for i in range(N):
            h, c = self.decoder(dec_in, (h, c))
            context = self.glimpse(enc, h, chosen)
            logits.append(self.pointer(enc, context, chosen))
            target = order[:, i]
            chosen = chosen.clone()
            chosen[rows, target] = True
            dec_in = emb[rows, target]
        return torch.stack(logits, dim=1)


def sample_sets(n, gen):
    """Point sets and the permutation sorting them by distance to their first point."""
    points = torch.rand(n, SET_SIZE, POINT_DIM, generator=gen) * 2 - 1
    return points, (points - points[:, :1]).norm(dim=-1).argsort(dim=1)


def pointer_loss(logits, order):
    return F.cross_entropy(logits.reshape(-1, SET_SIZE), order.reshape(-1))


def run(seed, steps):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 2024)
    val_points, val_order = sample_sets(512, gen)

    net = PointerNet()
    optimizer = torch.optim.Adagrad(net.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=LR_STEP, gamma=LR_GAMMA)

    trace = []
    for step in range(steps):
        net.train()
        points, order = sample_sets(BATCH, gen)
        loss = pointer_loss(net(points, order), order)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), CLIP_NORM)
        optimizer.step()
        schedule.step()
        trace.append(loss.item())
        if step % 30 == 0 or step == steps - 1:
            print(f"step={step} loss={trace[-1]:.4f} lr={optimizer.param_groups[0]['lr']:.4f}")

    net.eval()
    with torch.no_grad():
        logits = net(val_points, val_order)
        val_loss = pointer_loss(logits, val_order).item()
        exact = (logits.argmax(-1) == val_order).all(dim=1).float().mean().item()
    print(f"validation loss={val_loss:.4f} fully-sorted={exact:.3f}")
    return trace, val_loss


def main():
    parser = argparse.ArgumentParser(description="pointer network sorting points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    opts = parser.parse_args()
    trace, val_loss = run(opts.seed, opts.steps)
    tail = trace[-max(1, len(trace) // 10):]
    values = {"first_loss": trace[0], "train_loss": sum(tail) / len(tail), "val_loss": val_loss}
    print("CORPUS_RESULT " + json.dumps(
        {k: v if math.isfinite(v) else "nan" for k, v in values.items()}))


if __name__ == "__main__":
    main()
