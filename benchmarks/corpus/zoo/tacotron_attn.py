"""Tacotron-2-style text-to-frames model with location-sensitive attention (no vocoder).

Model (written out here, Shen et al. 2018 in miniature):

* encoder: character embedding, three Conv1d(k=5) + BatchNorm1d + ReLU blocks, a bidirectional
  ``nn.LSTM(batch_first=True)`` over the padded character sequences (padding zeroed);
* decoder, one step per output frame with teacher forcing: a two-layer pre-net (ReLU + dropout)
  on the previous ground-truth frame, an attention ``LSTMCell``, **location-sensitive attention**
  (energies ``v . tanh(W q + V h_j + U conv([a_prev; a_cum])_j)``, padded encoder positions
  masked with ``masked_fill(-inf)``, ``torch.softmax`` over encoder positions), a decoder
  ``LSTMCell`` over [attention state; context], and two outputs per step from
  [decoder state; context]: an 8-dim frame and a stop-token logit.

Data: 12 characters, each with a fixed 8-dim frame template, a fixed slope vector and a fixed
duration of 1-3 frames; an utterance of 4-10 characters becomes the concatenation of its
characters' frames (template + slope ramp within the character + a little noise), so the
frames follow the text and the decoder has to align to it. Texts and frames are right-padded.

Loss: masked ``F.mse_loss`` on the frames + ``F.binary_cross_entropy_with_logits`` on the stop
token (1 from the last frame on), both over the valid frames. Adam, ``clip_grad_norm_`` at 1.0,
``ExponentialLR`` stepped every batch.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0
N_CHARS = 12
FRAME_DIM = 8


@dataclass
class HParams:
    embed_dim: int = 32
    enc_dim: int = 32  # per LSTM direction
    prenet_dim: int = 32
    attn_rnn_dim: int = 64
    dec_rnn_dim: int = 64
    attn_dim: int = 32
    loc_filters: int = 8
    loc_kernel: int = 7
    prenet_dropout: float = 0.5
    batch_size: int = 24
    steps: int = 120
    lr: float = 3e-3
    gamma: float = 0.995
    clip: float = 1.0
    val_batches: int = 4


# ---------------------------------------------------------------------------- data
class Speaker:
    """The fixed 'voice': per-character frame templates, slopes and durations."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1234)
        self.templates = torch.randn(N_CHARS + 1, FRAME_DIM, generator=g)
        self.slopes = 0.8 * torch.randn(N_CHARS + 1, FRAME_DIM, generator=g)
        self.durations = torch.randint(1, 4, (N_CHARS + 1,), generator=g)

    def utterance(self, text: list[int], gen: torch.Generator) -> torch.Tensor:
        frames = []
        for c in text:
            d = int(self.durations[c])
            ramp = (torch.arange(d).float() + 0.5) / d - 0.5
            frames.append(self.templates[c] + ramp[:, None] * self.slopes[c])
        out = torch.cat(frames)
        return out + 0.05 * torch.randn(out.shape, generator=gen)


def make_batch(speaker: Speaker, n: int, gen: torch.Generator):
    lengths = torch.randint(4, 11, (n,), generator=gen)
    texts = [torch.randint(1, N_CHARS + 1, (int(k),), generator=gen).tolist() for k in lengths]
    frames = [speaker.utterance(t, gen) for t in texts]
    t_max = max(len(f) for f in frames)
    chars = torch.full((n, int(lengths.max())), PAD, dtype=torch.long)
    target = torch.zeros(n, t_max, FRAME_DIM)
    n_frames = torch.tensor([len(f) for f in frames])
    for i, (t, f) in enumerate(zip(texts, frames, strict=True)):
        chars[i, : len(t)] = torch.tensor(t)
        target[i, : len(f)] = f
    steps = torch.arange(t_max)[None, :]
    stop = (steps >= (n_frames[:, None] - 1)).float()
    frame_mask = steps < n_frames[:, None]
    return chars, target, stop, frame_mask


# ---------------------------------------------------------------------------- model
class ConvBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=5, padding=2)
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class Encoder(nn.Module):
    def __init__(self, hp: HParams) -> None:
        super().__init__()
        self.convs = nn.ModuleList([ConvBlock(hp.embed_dim) for _ in range(3)])
        self.lstm = nn.LSTM(hp.embed_dim, hp.enc_dim, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(1).float()
        x = x.transpose(1, 2)
        for block in self.convs:
            x = block(x) * keep
        out, _ = self.lstm(x.transpose(1, 2))
        return out * mask.unsqueeze(-1).float()


class LocationSensitiveAttention(nn.Module):
    def __init__(self, hp: HParams, memory_dim: int) -> None:
        super().__init__()
        self.query_layer = nn.Linear(hp.attn_rnn_dim, hp.attn_dim, bias=False)
        self.memory_layer = nn.Linear(memory_dim, hp.attn_dim, bias=False)
        self.location_conv = nn.Conv1d(2, hp.loc_filters, hp.loc_kernel,
                                       padding=hp.loc_kernel // 2, bias=False)
        self.location_dense = nn.Linear(hp.loc_filters, hp.attn_dim, bias=False)
        self.v = nn.Linear(hp.attn_dim, 1)

    def forward(self, query, memory, processed_memory, weights_cat, mask):
        location = self.location_dense(self.location_conv(weights_cat).transpose(1, 2))
        hidden = torch.tanh(self.query_layer(query).unsqueeze(1) + processed_memory + location)
        energies = self.v(hidden).squeeze(-1)
        energies = energies.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(energies, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
        return context, weights


class Prenet(nn.Module):
    def __init__(self, hp: HParams) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FRAME_DIM, hp.prenet_dim)
        self.fc2 = nn.Linear(hp.prenet_dim, hp.prenet_dim)
        self.dropout = nn.Dropout(hp.prenet_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.relu(self.fc1(x)))
        return self.dropout(F.relu(self.fc2(x)))


class Decoder(nn.Module):
    def __init__(self, hp: HParams) -> None:
        super().__init__()
        mem = 2 * hp.enc_dim
        self.hp = hp
        self.prenet = Prenet(hp)
        self.attention_rnn = nn.LSTMCell(hp.prenet_dim + mem, hp.attn_rnn_dim)
        self.attention = LocationSensitiveAttention(hp, mem)
        self.decoder_rnn = nn.LSTMCell(hp.attn_rnn_dim + mem, hp.dec_rnn_dim)
        self.frame_proj = nn.Linear(hp.dec_rnn_dim + mem, FRAME_DIM)
        self.stop_proj = nn.Linear(hp.dec_rnn_dim + mem, 1)

    def forward(self, memory, mask, targets):
        b, length, mem = memory.shape
        hp = self.hp
        processed = self.attention.memory_layer(memory)
        go = memory.new_zeros(b, 1, FRAME_DIM)
        prev_frames = self.prenet(torch.cat([go, targets[:, :-1]], dim=1))
        attn_h = attn_c = memory.new_zeros(b, hp.attn_rnn_dim)
        dec_h = dec_c = memory.new_zeros(b, hp.dec_rnn_dim)
        context = memory.new_zeros(b, mem)
        weights = memory.new_zeros(b, length)
        cumulative = memory.new_zeros(b, length)
        frames, stops, alignments = [], [], []
        for t in range(targets.shape[1]):
            attn_h, attn_c = self.attention_rnn(
                torch.cat([prev_frames[:, t], context], dim=-1), (attn_h, attn_c))
            weights_cat = torch.stack([weights, cumulative], dim=1)
            context, weights = self.attention(attn_h, memory, processed, weights_cat, mask)
            cumulative = cumulative + weights
            dec_h, dec_c = self.decoder_rnn(torch.cat([attn_h, context], dim=-1), (dec_h, dec_c))
            out = torch.cat([dec_h, context], dim=-1)
            frames.append(self.frame_proj(out))
            stops.append(self.stop_proj(out).squeeze(-1))
            alignments.append(weights)
        return torch.stack(frames, 1), torch.stack(stops, 1), torch.stack(alignments, 1)


class Tacotron(nn.Module):
    def __init__(self, hp: HParams) -> None:
        super().__init__()
        self.embedding = nn.Embedding(N_CHARS + 1, hp.embed_dim, padding_idx=PAD)
        self.encoder = Encoder(hp)
        self.decoder = Decoder(hp)

    def forward(self, chars, targets):
        mask = chars != PAD
        memory = self.encoder(self.embedding(chars), mask)
        return self.decoder(memory, mask, targets)


def tacotron_loss(frames, stop_logits, target, stop, frame_mask):
    valid = frame_mask.float()
    mse = (F.mse_loss(frames, target, reduction="none").mean(-1) * valid).sum() / valid.sum()
    bce = F.binary_cross_entropy_with_logits(stop_logits, stop, weight=valid, reduction="sum")
    return mse + bce / valid.sum()


def as_json_number(x: float):
    return x if math.isfinite(x) else "nan"


def main() -> None:
    hp = HParams()
    parser = argparse.ArgumentParser(description="Tacotron-style text-to-frames training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=hp.steps)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(77 + args.seed)
    speaker = Speaker()
    val_data = [make_batch(speaker, hp.batch_size, gen) for _ in range(hp.val_batches)]

    model = Tacotron(hp)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr, betas=(0.9, 0.999), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=hp.gamma)

    losses: list[float] = []
    for step in range(args.steps):
        model.train()
        chars, target, stop, frame_mask = make_batch(speaker, hp.batch_size, gen)
        frames, stop_logits, _ = model(chars, target)
        loss = tacotron_loss(frames, stop_logits, target, stop, frame_mask)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            print(f"[{step:4d}] loss={losses[-1]:.4f} grad_norm={float(grad_norm):.3f}")

    model.eval()
    total, focus = 0.0, 0.0
    with torch.no_grad():
        for chars, target, stop, frame_mask in val_data:
            frames, stop_logits, align = model(chars, target)
            total += tacotron_loss(frames, stop_logits, target, stop, frame_mask).item()
            focus += (align.amax(-1) * frame_mask).sum().item() / frame_mask.sum().item()
    val_loss = total / len(val_data)
    print(f"val loss={val_loss:.4f} mean max attention weight={focus / len(val_data):.3f}")

    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": as_json_number(losses[0]),
        "train_loss": as_json_number(sum(losses[-tail:]) / tail),
        "val_loss": as_json_number(val_loss),
    }))


if __name__ == "__main__":
    main()
