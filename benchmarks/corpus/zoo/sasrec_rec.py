"""SASRec-style sequential recommendation on synthetic interaction histories.

A re-implementation of SASRec (Kang & McAuley, 2018): item embeddings plus learned positional
embeddings, stacked blocks of causal self-attention (``F.scaled_dot_product_attention`` with
``is_causal=True``) and a point-wise feed-forward network, pre-LayerNorm with residuals, padded
(left) positions zeroed after each sublayer by a timeline mask. The user state at position t
scores candidate items by a dot product with the *same* item embedding table (shared scoring).

Training follows the paper: for every non-padded position, the next item of the history is the
positive and ``N_NEG`` items drawn uniformly are negatives; loss is
``F.binary_cross_entropy_with_logits`` over positive (target 1) and negative (target 0) scores.
Adam, constant learning rate.

Synthetic users: 60 items in 5 genres. Every item has 3 "follow-up" items (a fixed random
transition table); each user has a favourite genre. A history continues with a follow-up of the
item *before* the last one (p = 0.8: users browse two threads in alternation) or with a random
item of the user's genre otherwise, so scoring the next item needs attention to the previous
position, not only the current one. Histories have 6..20 interactions, left-padded to 20.

Validation: the same BCE on held-out users with a fixed set of sampled negatives (lower is better).
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_ITEMS = 60          # item ids 1..NUM_ITEMS, 0 = padding
NUM_GENRES = 5
FOLLOW_UPS = 3
P_FOLLOW = 0.8
MAX_LEN = 20
MIN_LEN = 6

HIDDEN = 32
HEADS = 2
NUM_BLOCKS = 2
N_NEG = 2
BATCH = 64
LR = 2e-3
N_VAL_USERS = 256


class InteractionSimulator:
    """Generates padded item histories for synthetic users."""

    def __init__(self, gen):
        self.genre_of = torch.arange(NUM_ITEMS) % NUM_GENRES  # genre of item id (i + 1)
        self.by_genre = [torch.nonzero(self.genre_of == k).flatten() + 1
                         for k in range(NUM_GENRES)]
        self.follow = torch.randint(1, NUM_ITEMS + 1, (NUM_ITEMS + 1, FOLLOW_UPS), generator=gen)
        self.follow_p = torch.softmax(2.0 * torch.randn(NUM_ITEMS + 1, FOLLOW_UPS, generator=gen),
                                      dim=-1)

    def histories(self, n_users, gen):
        genre = torch.randint(0, NUM_GENRES, (n_users,), generator=gen)
        pool = torch.stack([self.by_genre[int(k)] for k in genre])  # (n, items per genre)
        seq = torch.zeros(n_users, MAX_LEN + 1, dtype=torch.long)
        pick = torch.randint(0, pool.size(1), (n_users,), generator=gen)
        seq[:, 0] = pool[torch.arange(n_users), pick]
        pick = torch.randint(0, pool.size(1), (n_users,), generator=gen)
        seq[:, 1] = pool[torch.arange(n_users), pick]
        for t in range(2, MAX_LEN + 1):
            back = seq[:, t - 2]  # the follow-up continues the item *before* the last one
            k = torch.multinomial(self.follow_p[back], 1, generator=gen).squeeze(1)
            nxt_follow = self.follow[back, k]
            pick = torch.randint(0, pool.size(1), (n_users,), generator=gen)
            nxt_genre = pool[torch.arange(n_users), pick]
            use_follow = torch.rand(n_users, generator=gen) < P_FOLLOW
            seq[:, t] = torch.where(use_follow, nxt_follow, nxt_genre)
        # variable history lengths: left-pad the start of shorter histories
        lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (n_users,), generator=gen)
        keep = torch.arange(MAX_LEN + 1)[None, :] >= (MAX_LEN - lengths)[:, None]
        seq = seq * keep
        inputs, targets = seq[:, :-1], seq[:, 1:]
        targets = targets * (inputs > 0)  # no target where the input is padding
        return inputs, targets


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, queries, keys):
        b, n, d = queries.shape

        def split(x):
            return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(queries)), split(self.k_proj(keys)), split(self.v_proj(keys))
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(ctx.transpose(1, 2).reshape(b, n, d))


class PointWiseFeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class SASBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.attn = CausalSelfAttention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = PointWiseFeedForward(dim)

    def forward(self, seqs, timeline):
        # as in the reference implementation: normalized queries, raw keys/values
        q = self.attn_norm(seqs)
        seqs = q + self.attn(q, seqs)
        seqs = seqs + self.ffn(self.ffn_norm(seqs))
        return seqs * timeline


class SASRec(nn.Module):
    def __init__(self):
        super().__init__()
        self.item_emb = nn.Embedding(NUM_ITEMS + 1, HIDDEN, padding_idx=0)
        self.pos_emb = nn.Embedding(MAX_LEN, HIDDEN)
        self.blocks = nn.ModuleList([SASBlock(HIDDEN, HEADS) for _ in range(NUM_BLOCKS)])
        self.last_norm = nn.LayerNorm(HIDDEN, eps=1e-8)

    def user_states(self, history):
        timeline = (history > 0).unsqueeze(-1).float()
        positions = torch.arange(history.size(1), device=history.device)
        seqs = self.item_emb(history) * math.sqrt(HIDDEN) + self.pos_emb(positions)
        seqs = seqs * timeline
        for block in self.blocks:
            seqs = block(seqs, timeline)
        return self.last_norm(seqs)

    def forward(self, history, pos_items, neg_items):
        """Scores of the positive (B, L) and negative (B, L, K) items at every position."""
        states = self.user_states(history)
        pos_logits = (states * self.item_emb(pos_items)).sum(-1)
        neg_logits = (states.unsqueeze(2) * self.item_emb(neg_items)).sum(-1)
        return pos_logits, neg_logits


def bce_sampled(pos_logits, neg_logits, valid):
    pos_loss = F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits),
                                                  reduction="none")
    neg_loss = F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits),
                                                  reduction="none").sum(-1)
    per_pos = (pos_loss + neg_loss) / (1 + neg_logits.size(-1))
    return (per_pos * valid).sum() / valid.sum()


def sample_negatives(targets, gen):
    return torch.randint(1, NUM_ITEMS + 1, (*targets.shape, N_NEG), generator=gen)


def _num(x):
    return x if math.isfinite(x) else "nan"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(2024 + 17 * args.seed)
    sim = InteractionSimulator(data_gen)
    val_hist, val_next = sim.histories(N_VAL_USERS, data_gen)
    val_neg = sample_negatives(val_next, data_gen)

    model = SASRec()
    for _name, p in model.named_parameters():  # xavier init as in the reference code
        if p.dim() > 1:
            nn.init.xavier_normal_(p)
    adam = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.98))

    train_losses = []
    for step in range(args.steps):
        model.train()
        hist, nxt = sim.histories(BATCH, data_gen)
        neg = sample_negatives(nxt, data_gen)
        pos_logits, neg_logits = model(hist, nxt, neg)
        loss = bce_sampled(pos_logits, neg_logits, (nxt > 0).float())
        adam.zero_grad()
        loss.backward()
        adam.step()
        train_losses.append(loss.item())
        if step % 40 == 0:
            print(f"[{step:04d}] bce={train_losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        pos_logits, neg_logits = model(val_hist, val_next, val_neg)
        val_loss = bce_sampled(pos_logits, neg_logits, (val_next > 0).float()).item()
        # hit rate of the positive against its sampled negatives, for information
        hit = (pos_logits.unsqueeze(-1) > neg_logits).all(-1).float()
        hit = (hit * (val_next > 0)).sum() / (val_next > 0).sum()
    print(f"val bce={val_loss:.4f} hit@{N_NEG + 1}={hit.item():.3f}")
    tail = max(1, len(train_losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": _num(train_losses[0]),
        "train_loss": _num(sum(train_losses[-tail:]) / tail),
        "val_loss": _num(val_loss),
    }))


if __name__ == "__main__":
    main()
