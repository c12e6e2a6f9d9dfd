"""A speech-recognition-style CTC model on synthetic "audio" feature frames.

Data: an utterance is a sequence of 4..8 tokens (no immediate repeats) out of 12; every token
emits 3..5 frames of its own 16-dim template, with noise, a per-utterance "speaker" offset, and
frames at token boundaries blended with the neighbour (coarticulation). Utterances have
different lengths; the batch is zero-padded to the longest.

Model: a conv subsampling front-end (a conv, then a stride-2 conv: half the frame rate), a
hand-written pre-norm transformer encoder whose attention adds ALiBi biases (a per-head slope
times the distance between frames, symmetric, no position embeddings) and masks the padded
frames with ``masked_fill(-inf)`` over the keys, then a linear classifier over the 12 tokens and
the CTC blank. Loss: ``F.ctc_loss`` on log-probabilities (time-major) with the subsampled input
lengths and the target lengths. Adam with the Noam schedule (linear warmup, inverse square root
decay) through ``LambdaLR``, ``clip_grad_norm_``. Validation: the CTC loss on a fixed set.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

N_TOKENS = 12
BLANK = 0
FEAT = 16
DIM = 48
N_HEADS = 4
N_LAYERS = 2
MIN_TOKENS, MAX_TOKENS = 4, 8
BATCH = 24
PEAK_LR = 2e-3
WARMUP = 30
N_VAL = 96
NOISE = 1.5
OFFSET = 2.0  # per-utterance channel offset: only the utterance as a whole reveals it


class Speaker:
    """Token templates (the "phones") of one synthetic language."""

    def __init__(self, g: torch.Generator) -> None:
        self.templates = torch.randn(N_TOKENS + 1, FEAT, generator=g)

    def utterances(self, n: int, g: torch.Generator):
        feats, targets, frame_lens, target_lens = [], [], [], []
        for _ in range(n):
            length = int(torch.randint(MIN_TOKENS, MAX_TOKENS + 1, (1,), generator=g))
            tokens = [int(torch.randint(1, N_TOKENS + 1, (1,), generator=g))]
            while len(tokens) < length:
                nxt = int(torch.randint(1, N_TOKENS, (1,), generator=g))
                tokens.append(nxt if nxt < tokens[-1] else nxt + 1)  # never the same twice
            offset = OFFSET * torch.randn(FEAT, generator=g)
            frames = []
            for i, tok in enumerate(tokens):
                reps = int(torch.randint(3, 6, (1,), generator=g))
                block = self.templates[tok].expand(reps, FEAT).clone()
                if i > 0:  # coarticulation with the previous token
                    block[0] = 0.5 * (block[0] + self.templates[tokens[i - 1]])
                frames.append(block)
            x = torch.cat(frames) + offset + NOISE * torch.randn(sum(len(f) for f in frames), FEAT,
                                                               generator=g)
            feats.append(x)
            targets.append(torch.tensor(tokens))
            frame_lens.append(len(x))
            target_lens.append(length)
        width = max(frame_lens)
        batch = torch.zeros(n, width, FEAT)
        for i, x in enumerate(feats):
            batch[i, :len(x)] = x
        return (batch, torch.tensor(frame_lens), torch.cat(targets), torch.tensor(target_lens))


def alibi_slopes(heads: int) -> torch.Tensor:
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])


class AlibiSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head_dim = DIM // N_HEADS
        self.query = nn.Linear(DIM, DIM)
        self.key = nn.Linear(DIM, DIM)
        self.value = nn.Linear(DIM, DIM)
        self.out = nn.Linear(DIM, DIM)
        self.register_buffer("slopes", alibi_slopes(N_HEADS), persistent=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.query(x).view(B, T, N_HEADS, self.head_dim).transpose(1, 2)
        k = self.key(x).view(B, T, N_HEADS, self.head_dim).transpose(1, 2)
        v = self.value(x).view(B, T, N_HEADS, self.head_dim).transpose(1, 2)
        pos = torch.arange(T, device=x.device)
        distance = (pos[None, :] - pos[:, None]).abs().float()
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = scores - self.slopes[:, None, None] * distance  # ALiBi
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(B, T, DIM))


class EncoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = AlibiSelfAttention()
        self.norm2 = nn.LayerNorm(DIM)
        self.ffn = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.ReLU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pad)
        return x + self.ffn(self.norm2(x))


class CTCEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.subsample = nn.Sequential(
            nn.Conv1d(FEAT, DIM, 3, padding=1), nn.GELU(),
            nn.Conv1d(DIM, DIM, 3, stride=2, padding=1), nn.GELU(),
        )
        self.layers = nn.ModuleList(EncoderLayer() for _ in range(N_LAYERS))
        self.norm = nn.LayerNorm(DIM)
        self.classifier = nn.Linear(DIM, N_TOKENS + 1)

    @staticmethod
    def subsampled(lengths: torch.Tensor) -> torch.Tensor:
        return (lengths - 1) // 2 + 1

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor):
        h = self.subsample(feats.transpose(1, 2)).transpose(1, 2)  # (B, T', DIM)
        out_lengths = self.subsampled(lengths)
        pad = torch.arange(h.size(1), device=h.device)[None, :] >= out_lengths[:, None]
        for layer in self.layers:
            h = layer(h, pad)
        log_probs = self.classifier(self.norm(h)).log_softmax(-1)
        return log_probs.transpose(0, 1), out_lengths  # (T', B, C) for ctc_loss


def noam(step: int) -> float:
    s = step + 1
    return min(s / WARMUP, math.sqrt(WARMUP / s))


def as_json_number(x: float):
    return x if math.isfinite(x) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(31337 + args.seed)
    speaker = Speaker(g)
    val = speaker.utterances(N_VAL, g)

    model = CTCEncoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.98), eps=1e-9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, noam)

    losses = []
    model.train()
    for step in range(args.steps):
        feats, frame_lens, targets, target_lens = speaker.utterances(BATCH, g)
        log_probs, out_lens = model(feats, frame_lens)
        loss = F.ctc_loss(log_probs, targets, out_lens, target_lens, blank=BLANK,
                          zero_infinity=True)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 25 == 0:
            print(f"step {step:4d}  loss {losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        feats, frame_lens, targets, target_lens = val
        log_probs, out_lens = model(feats, frame_lens)
        val_loss = F.ctc_loss(log_probs, targets, out_lens, target_lens, blank=BLANK,
                              zero_infinity=True).item()
    print(f"val loss {val_loss:.4f}")
    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": as_json_number(losses[0]),
        "train_loss": as_json_number(sum(losses[-tail:]) / tail),
        "val_loss": as_json_number(val_loss),
    }))


if __name__ == "__main__":
    main()
