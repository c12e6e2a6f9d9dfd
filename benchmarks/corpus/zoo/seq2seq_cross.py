"""Encoder-decoder Transformer written from scratch, trained (teacher forcing) to reverse a string.

Decoder layers: masked self-attention (causal mask built with torch.triu) then cross-attention
over the encoder memory. Validation decodes greedily and scores every step's logits against
the reversed source, so the model is judged on what it would really output.
"""

import argparse
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SRC_LEN = 8
N_TOKENS = 12            # symbols 0..11
BOS = N_TOKENS
VOCAB = N_TOKENS + 1


class Attention(nn.Module):
    """Multi-head scaled dot-product attention; queries from `x`, keys/values from `memory`."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.dk = heads, dim // heads
        self.wq = nn.Linear(dim, dim)
        self.wk = nn.Linear(dim, dim)
        self.wv = nn.Linear(dim, dim)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x, memory, future_mask=None):
        B, Tq, D = x.shape
        Tk = memory.shape[1]
        q = self.wq(x).reshape(B, Tq, self.heads, self.dk).permute(0, 2, 1, 3)
        k = self.wk(memory).reshape(B, Tk, self.heads, self.dk).permute(0, 2, 1, 3)
        v = self.wv(memory).reshape(B, Tk, self.heads, self.dk).permute(0, 2, 1, 3)
        att = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.dk)
        if future_mask is not None:
            att = att.masked_fill(future_mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        out = torch.matmul(att, v).permute(0, 2, 1, 3).reshape(B, Tq, D)
        return self.wo(out)


def feed_forward(dim, hidden):
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = feed_forward(dim, hidden)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.norm1(x + self.self_attn(x, x))
        return self.norm2(x + self.ff(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = feed_forward(dim, hidden)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, y, memory, causal):
        y = self.norm1(y + self.self_attn(y, y, causal))
        y = self.norm2(y + self.cross_attn(y, memory))
        return self.norm3(y + self.ff(y))


class Seq2SeqTransformer(nn.Module):
    def __init__(self, dim=48, heads=4, hidden=96, n_enc=2, n_dec=2, max_len=16):
        super().__init__()
        self.src_embed = nn.Embedding(VOCAB, dim)
        self.tgt_embed = nn.Embedding(VOCAB, dim)
        self.positions = nn.Parameter(torch.randn(max_len, dim) * 0.1)
        self.encoder = nn.ModuleList([EncoderLayer(dim, heads, hidden) for _ in range(n_enc)])
        self.decoder = nn.ModuleList([DecoderLayer(dim, heads, hidden) for _ in range(n_dec)])
        self.generator = nn.Linear(dim, VOCAB)

    def encode(self, src):
        h = self.src_embed(src) + self.positions[: src.shape[1]]
        for layer in self.encoder:
            h = layer(h)
        return h

    def decode(self, tgt_in, memory):
        T = tgt_in.shape[1]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        h = self.tgt_embed(tgt_in) + self.positions[:T]
        for layer in self.decoder:
            h = layer(h, memory, causal)
        return self.generator(h)

    def forward(self, src, tgt_in):
        return self.decode(tgt_in, self.encode(src))


def reverse_task(batch, gen):
    src = torch.randint(0, N_TOKENS, (batch, SRC_LEN), generator=gen)
    tgt = src.flip(1)
    tgt_in = torch.cat([torch.full((batch, 1), BOS), tgt[:, :-1]], dim=1)
    return src, tgt_in, tgt


@torch.no_grad()
def greedy_loss(model, src, tgt):
    memory = model.encode(src)
    ys = torch.full((src.shape[0], 1), BOS)
    losses = []
    for t in range(tgt.shape[1]):
        logits = model.decode(ys, memory)[:, -1]
        losses.append(F.cross_entropy(logits, tgt[:, t]))
        ys = torch.cat([ys, logits.argmax(-1, keepdim=True)], dim=1)
    return torch.stack(losses).mean().item()


parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=200)
args = parser.parse_args()

torch.manual_seed(args.seed)
gen = torch.Generator().manual_seed(args.seed ^ 0x5EED)
model = Seq2SeqTransformer()
optim = torch.optim.Adam(model.parameters(), lr=1e-3)

train_curve = []
for step in range(args.steps):
    model.train()
    src, tgt_in, tgt = reverse_task(32, gen)
    logits = model(src, tgt_in)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt.reshape(-1))
    optim.zero_grad()
    loss.backward()
    optim.step()
    train_curve.append(loss.item())
    if step % 40 == 0 or step == args.steps - 1:
        print(f"step {step:4d} loss {loss.item():.4f}")

model.eval()
val_src, _, val_tgt = reverse_task(200, torch.Generator().manual_seed(99 + args.seed))
val_loss = greedy_loss(model, val_src, val_tgt)
print(f"greedy-decoding val loss {val_loss:.4f}")

k = max(1, args.steps // 10)
numbers = {"first_loss": train_curve[0], "train_loss": sum(train_curve[-k:]) / k,
           "val_loss": val_loss}
numbers = {n: (v if math.isfinite(v) else "nan") for n, v in numbers.items()}
print("CORPUS_RESULT " + json.dumps(numbers))
