"""Music Transformer (Huang et al. 2018) decoder on synthetic event-token melodies.

Event vocabulary (MIDI-like, one octave): NOTE_ON(p) and NOTE_OFF(p) for 12 pitch classes,
TIME_SHIFT(d) for d in 1..4 ticks, plus PAD and BOS. A note is ``ON p, SHIFT d, OFF p`` and may be
followed by a rest ``SHIFT r``.

Each melody draws a motif of three to five notes (distinct pitches from a seven-note scale,
durations, optional rests), then repeats it, each repeat followed by zero or one random filler
note, until 80 events. The motif therefore comes back at distances that vary within and across
melodies; predicting a repeat means finding the event's previous occurrence and what followed
it, which relative-position attention makes easy.

Self-attention is written out with the relative logits of the paper's memory-efficient
"skewing" trick: ``Q Er^T`` with one learned relative embedding per head, left-padded by one
column, reshaped and sliced into ``S_rel``, added to ``Q K^T`` before the ``masked_fill(-inf)``
causal mask. No absolute positions. Pre-LN blocks and a final LayerNorm. ``F.cross_entropy`` with
``label_smoothing=0.1``; Adam(0.9, 0.98, eps 1e-9) with the Transformer paper's inverse square
root schedule (Noam) as a ``LambdaLR``; ``clip_grad_value_``.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

PAD, BOS = 0, 1
ON0, OFF0, SHIFT0 = 2, 14, 26
VOCAB = 30
SEQ = 80
SCALE = (0, 2, 4, 5, 7, 9, 11)

D_MODEL, HEADS, LAYERS, D_FF = 64, 4, 2, 128
BATCH = 16
WARMUP = 40
NOAM_FACTOR = 0.5
CLIP_VALUE = 0.1


# ---------------------------------------------------------------- synthetic melodies
def note_events(pitch: int, dur: int, rest: int) -> list[int]:
    ev = [ON0 + pitch, SHIFT0 + dur - 1, OFF0 + pitch]
    if rest:
        ev.append(SHIFT0 + rest - 1)
    return ev


def melody(rng: torch.Generator) -> list[int]:
    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=rng))

    n_notes = ri(3, 5)
    pitches = torch.randperm(len(SCALE), generator=rng)[:n_notes].tolist()
    motif = [(SCALE[i], ri(1, 4), ri(0, 1) * ri(1, 2)) for i in pitches]
    events = [BOS]
    while len(events) < SEQ + 1:
        for pitch, dur, rest in motif:
            events += note_events(pitch, dur, rest)
        for _ in range(ri(0, 1)):
            events += note_events(ri(0, 11), ri(1, 4), 0)
    return events[: SEQ + 1]


def batch_of_melodies(n: int, rng: torch.Generator) -> torch.Tensor:
    return torch.tensor([melody(rng) for _ in range(n)], dtype=torch.long)


# ---------------------------------------------------------------- model
class RelativeSelfAttention(nn.Module):
    """Causal multi-head self-attention with per-head relative embeddings (skewing)."""

    def __init__(self, d_model: int, n_heads: int, max_len: int) -> None:
        super().__init__()
        self.h, self.dk = n_heads, d_model // n_heads
        self.max_len = max_len
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        # row r <-> relative distance r - (max_len - 1), i.e. -(max_len - 1) .. 0
        self.rel_emb = nn.Parameter(torch.randn(n_heads, max_len, self.dk) * self.dk**-0.5)

    @staticmethod
    def skew(qe: torch.Tensor) -> torch.Tensor:
        b, h, length, _ = qe.shape
        padded = F.pad(qe, (1, 0))
        return padded.reshape(b, h, length + 1, length)[:, :, 1:, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, length, self.h, self.dk).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        er = self.rel_emb[:, self.max_len - length:, :]
        s_rel = self.skew(torch.einsum("bhld,hmd->bhlm", q, er))
        logits = (q @ k.transpose(-2, -1) + s_rel) / math.sqrt(self.dk)
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), 1)
        logits = logits.masked_fill(future, float("-inf"))
        attn = torch.softmax(logits, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, length, self.h * self.dk)
        return self.out_proj(y)


class DecoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = RelativeSelfAttention(D_MODEL, HEADS, SEQ)
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.ff = nn.Sequential(nn.Linear(D_MODEL, D_FF), nn.ReLU(), nn.Linear(D_FF, D_MODEL))
        self.norm2 = nn.LayerNorm(D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class MusicTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL, padding_idx=PAD)
        self.layers = nn.ModuleList(DecoderLayer() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(D_MODEL)
        self.out = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) * math.sqrt(D_MODEL)
        for layer in self.layers:
            x = layer(x)
        return self.out(self.norm(x))


def event_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1),
                           ignore_index=PAD, label_smoothing=0.1)


def noam(step: int) -> float:
    s = step + 1
    return NOAM_FACTOR * D_MODEL**-0.5 * min(s**-0.5, s * WARMUP**-1.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=160)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = torch.Generator().manual_seed(7919 * (args.seed + 1))
    val_seqs = batch_of_melodies(64, rng)

    model = MusicTransformer()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, noam)

    losses = []
    for step in range(args.steps):
        model.train()
        seqs = batch_of_melodies(BATCH, rng)
        logits = model(seqs[:, :-1])
        loss = event_loss(logits, seqs[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_value_(model.parameters(), CLIP_VALUE)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 25 == 0:
            print(f"{step:4d}  loss {losses[-1]:.4f}  lr {scheduler.get_last_lr()[0]:.5f}")

    model.eval()
    with torch.no_grad():
        val = event_loss(model(val_seqs[:, :-1]), val_seqs[:, 1:]).item()
    print(f"validation loss {val:.4f}")

    def clean(v: float):
        return v if math.isfinite(v) else "nan"

    k = max(1, args.steps // 10)
    summary = {"first_loss": clean(losses[0]), "train_loss": clean(sum(losses[-k:]) / k),
               "val_loss": clean(val)}
    print("CORPUS_RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
