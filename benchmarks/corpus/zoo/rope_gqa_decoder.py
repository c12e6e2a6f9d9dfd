"""A hand-written decoder-only LM in the Llama/Mistral mould, trained on associative recall.

Rotary position embeddings applied to queries and keys, grouped-query attention (4 query heads
share 2 key/value heads, repeated with ``repeat_interleave``), an explicit causal mask
(``masked_fill(-inf)`` then ``F.softmax``), RMSNorm written by hand, a SwiGLU feed-forward, and
the output projection tied to the token embedding.

Task (multi-query associative recall): a sequence lists 6 key/value pairs ``k1 v1 ... k6 v6`` (6
distinct keys out of 16, values out of 8), then a separator, then 6 queries, each a key from the
list followed by its value ``q1 a1 ... q6 a6``. The loss is the next-token cross-entropy at the
query positions only (everything else is ``-100``): answering needs an induction circuit (find the
key earlier in the context, copy the token after it), so a model without working attention stays at
chance over the values. Adam with a linear warmup, constant afterwards. Validation scores the
answers the way the model is used: each query is answered from its prefix alone (no future token can
leak in).
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

N_KEYS = 16
N_VALUES = 8
SEP = N_KEYS + N_VALUES
VOCAB = SEP + 1
PAIRS = 6
QUERIES = 6
SEQ_LEN = 2 * PAIRS + 1 + 2 * QUERIES
DIM = 64
N_HEADS = 4
N_KV_HEADS = 2
N_LAYERS = 2
BATCH = 32
LR = 3e-3
WARMUP = 20
N_VAL = 256


def recall_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.argsort(torch.rand(n, N_KEYS, generator=g), dim=1)[:, :PAIRS]
    values = torch.randint(0, N_VALUES, (n, PAIRS), generator=g) + N_KEYS
    context = torch.stack([keys, values], dim=2).reshape(n, 2 * PAIRS)
    order = torch.argsort(torch.rand(n, PAIRS, generator=g), dim=1)[:, :QUERIES]
    q = keys.gather(1, order)
    a = values.gather(1, order)
    queries = torch.stack([q, a], dim=2).reshape(n, 2 * QUERIES)
    sep = torch.full((n, 1), SEP, dtype=torch.long)
    tokens = torch.cat([context, sep, queries], dim=1)
    labels = torch.full_like(tokens, -100)
    q_pos = 2 * PAIRS + 1 + 2 * torch.arange(QUERIES)
    labels[:, q_pos] = a
    return tokens, labels


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(seq_len).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.flatten(-2)


class GroupedQueryAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head_dim = DIM // N_HEADS
        self.wq = nn.Linear(DIM, N_HEADS * self.head_dim, bias=False)
        self.wk = nn.Linear(DIM, N_KV_HEADS * self.head_dim, bias=False)
        self.wv = nn.Linear(DIM, N_KV_HEADS * self.head_dim, bias=False)
        self.wo = nn.Linear(N_HEADS * self.head_dim, DIM, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                causal: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.wq(x).view(B, L, N_HEADS, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, L, N_KV_HEADS, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, L, N_KV_HEADS, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k = k.repeat_interleave(N_HEADS // N_KV_HEADS, dim=1)
        v = v.repeat_interleave(N_HEADS // N_KV_HEADS, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(causal, float("-inf"))
        weights = F.softmax(scores, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(B, L, -1)
        return self.wo(out)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.w1 = nn.Linear(DIM, hidden, bias=False)
        self.w3 = nn.Linear(DIM, hidden, bias=False)
        self.w2 = nn.Linear(hidden, DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DecoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(DIM)
        self.attention = GroupedQueryAttention()
        self.ffn_norm = RMSNorm(DIM)
        self.feed_forward = SwiGLU()

    def forward(self, x, cos, sin, causal):
        x = x + self.attention(self.attention_norm(x), cos, sin, causal)
        return x + self.feed_forward(self.ffn_norm(x))


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(DecoderLayer() for _ in range(N_LAYERS))
        self.norm = RMSNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB, bias=False)
        self.output.weight = self.tok_embeddings.weight  # tied
        nn.init.normal_(self.tok_embeddings.weight, std=0.02)
        cos, sin = rotary_tables(SEQ_LEN, DIM // N_HEADS)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.size(1)
        causal = torch.ones(L, L, dtype=torch.bool, device=tokens.device).triu(1)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, self.cos[:L], self.sin[:L], causal)
        return self.output(self.norm(h))


@torch.no_grad()
def answer_loss(model: Decoder, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Each query answered from its own prefix: the last logit of tokens[:, :pos + 1]."""
    total, count = 0.0, 0
    for pos in (labels[0] != -100).nonzero().flatten().tolist():
        logits = model(tokens[:, :pos + 1])[:, -1]
        total += F.cross_entropy(logits, labels[:, pos], reduction="sum").item()
        count += labels.size(0)
    return total / count


def as_json_number(x: float):
    return x if math.isfinite(x) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=160)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(1000 + args.seed)
    val_tokens, val_labels = recall_batch(N_VAL, g)

    model = Decoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / WARMUP))

    losses = []
    model.train()
    for step in range(args.steps):
        tokens, labels = recall_batch(BATCH, g)
        logits = model(tokens)
        loss = F.cross_entropy(logits.view(-1, VOCAB), labels.view(-1), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 25 == 0:
            print(f"step {step:4d}  loss {losses[-1]:.4f}")

    model.eval()
    val_loss = answer_loss(model, val_tokens, val_labels)
    print(f"val loss {val_loss:.4f}")
    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": as_json_number(losses[0]),
        "train_loss": as_json_number(sum(losses[-tail:]) / tail),
        "val_loss": as_json_number(val_loss),
    }))


if __name__ == "__main__":
    main()
