"""A hybrid causal LM: kernelized linear attention layers interleaved with sliding-window softmax.

Layers alternate between two token mixers, the way recent hybrid models (linear-attention or
state-space layers with a few local-attention layers) are built:

- ``LinearAttention``: feature map ``elu(x) + 1`` on queries and keys, no softmax; causality from
  running sums (``cumsum`` over positions of ``phi(k) v^T`` and of ``phi(k)``), so every position
  sees its whole prefix at constant cost per token.
- ``SlidingWindowAttention``: ordinary softmax attention restricted to a local causal band (a
  query at t sees keys t - WINDOW + 1 .. t) with a learned bias per head and offset; the band
  mask is built once and applied with ``masked_fill(-inf)`` before ``F.softmax``.

Pre-norm LayerNorm blocks with a GELU MLP, learned absolute positions, and the output projection
tied to the token embedding. NAdam with a short linear warmup.

Task: each sequence opens with a key token, then follows a second-order Markov source (local
context: the next token depends on the two before it). Now and then a marker token appears and
the token after it is always the opening key, possibly 60 positions back, beyond the window: only
the linear-attention layers can fetch it. Validation scores every position from its own prefix
(the last logit of ``tokens[:, :t + 1]``), as the model is used when generating.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

N_REGULAR = 24
MARKER = N_REGULAR
VOCAB = N_REGULAR + 1
SEQ_LEN = 40
P_MARKER = 0.07
DIM = 32
N_HEADS = 2
LINEAR_HEADS = 4
WINDOW = 6
LAYERS = ("linear", "window", "linear")
BATCH = 16
LR = 6e-3
WARMUP = 10
N_VAL = 32


class MarkovCopySource:
    """Second-order Markov tokens after an opening key; after each marker, the key again."""

    def __init__(self, g: torch.Generator) -> None:
        first = 1.5 * torch.randn(N_REGULAR, N_REGULAR, generator=g)  # prev1 -> next
        second = 2.5 * torch.randn(N_REGULAR, N_REGULAR, generator=g)  # prev2 -> next
        self.table = (first[None, :, :] + second[:, None, :]).softmax(-1)  # (prev2, prev1)

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        tokens = torch.empty(n, SEQ_LEN, dtype=torch.long)
        key = torch.randint(0, N_REGULAR, (n,), generator=g)
        tokens[:, 0] = key
        tokens[:, 1] = torch.randint(0, N_REGULAR, (n,), generator=g)
        prev2, prev1 = tokens[:, 0].clone(), tokens[:, 1].clone()
        marker_next = torch.zeros(n, dtype=torch.bool)
        for t in range(2, SEQ_LEN):
            nxt = torch.multinomial(self.table[prev2, prev1], 1, generator=g).squeeze(1)
            place_marker = (torch.rand(n, generator=g) < P_MARKER) & ~marker_next & (t > 6)
            place_marker &= t < SEQ_LEN - 1
            tok = torch.where(marker_next, key, torch.where(place_marker, MARKER, nxt))
            tokens[:, t] = tok
            # the Markov state skips the marker: the key continues the chain
            keep = tok != MARKER
            prev2 = torch.where(keep, prev1, prev2)
            prev1 = torch.where(keep, tok, prev1)
            marker_next = place_marker
        return tokens


class LinearAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head_dim = DIM // LINEAR_HEADS
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, LINEAR_HEADS, self.head_dim).unbind(2)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0  # (B, L, H, d), positive features
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, d)
        kv = (k.unsqueeze(-1) * v.unsqueeze(-2)).cumsum(dim=2)  # running sum of phi(k) v^T
        z = k.cumsum(dim=2)  # running sum of phi(k)
        num = (q.unsqueeze(-1) * kv).sum(-2)
        den = (q * z).sum(-1, keepdim=True) + 1e-6
        return self.out((num / den).transpose(1, 2).reshape(B, L, DIM))


class SlidingWindowAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head_dim = DIM // N_HEADS
        self.q_proj = nn.Linear(DIM, DIM)
        self.k_proj = nn.Linear(DIM, DIM)
        self.v_proj = nn.Linear(DIM, DIM)
        self.o_proj = nn.Linear(DIM, DIM)
        self.rel_bias = nn.Parameter(torch.zeros(N_HEADS, WINDOW))  # one score per head and offset
        i = torch.arange(SEQ_LEN)[:, None]
        j = torch.arange(SEQ_LEN)[None, :]
        self.register_buffer("outside", (j > i) | (j <= i - WINDOW), persistent=False)
        self.register_buffer("offset", (i - j).clamp(0, WINDOW - 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, N_HEADS, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, N_HEADS, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, N_HEADS, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = scores + self.rel_bias[:, self.offset[:L, :L]]  # (H, L, L) relative bias
        scores = scores.masked_fill(self.outside[:L, :L], float("-inf"))
        attn = F.softmax(scores, dim=-1)
        return self.o_proj((attn @ v).transpose(1, 2).reshape(B, L, DIM))


class Block(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.mixer = LinearAttention() if kind == "linear" else SlidingWindowAttention()
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HybridLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(SEQ_LEN, DIM)
        self.blocks = nn.ModuleList(Block(kind) for kind in LAYERS)
        self.norm_f = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight  # weight tying
        nn.init.normal_(self.embed.weight, std=0.05)
        nn.init.normal_(self.pos.weight, std=0.05)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.size(1)
        h = self.embed(tokens) + self.pos(torch.arange(L, device=tokens.device))
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.norm_f(h))


@torch.no_grad()
def prefix_loss(model: HybridLM, tokens: torch.Tensor) -> float:
    """Next-token loss with each position predicted from its prefix only."""
    total = 0.0
    for t in range(SEQ_LEN - 1):
        logits = model(tokens[:, :t + 1])[:, -1]
        total += F.cross_entropy(logits, tokens[:, t + 1], reduction="sum").item()
    return total / (tokens.size(0) * (SEQ_LEN - 1))


def as_json_number(x: float):
    return x if math.isfinite(x) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(7000 + args.seed)
    source = MarkovCopySource(g)
    val_tokens = source.sample(N_VAL, g)

    model = HybridLM()
    optimizer = torch.optim.NAdam(model.parameters(), lr=LR, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / WARMUP))

    losses = []
    model.train()
    for step in range(args.steps):
        tokens = source.sample(BATCH, g)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 25 == 0:
            print(f"step {step:4d}  loss {losses[-1]:.4f}")

    model.eval()
    val_loss = prefix_loss(model, val_tokens)
    print(f"val loss {val_loss:.4f}")
    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": as_json_number(losses[0]),
        "train_loss": as_json_number(sum(losses[-tail:]) / tail),
        "val_loss": as_json_number(val_loss),
    }))


if __name__ == "__main__":
    main()
