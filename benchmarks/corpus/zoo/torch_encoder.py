"""Token tagging with torch's nn.TransformerEncoder, sequence-first layout (T, B, D).

Each token of a padded batch is tagged 1 when the same symbol occurs somewhere else in its own
sequence (padding excluded), else 0: every tag depends on the rest of the sequence.
"""

import argparse
import json
import math

import torch
import torch.nn as nn

PAD_ID = 0
N_SYMBOLS = 16          # real symbols are 1..N_SYMBOLS
MAX_LEN = 16
MIN_LEN = 6


def sample_batch(generator, batch_size):
    """Returns src (T, B) long, tags (T, B) long with -100 on padding, and pad mask (B, T)."""
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (batch_size,), generator=generator)
    src = torch.randint(1, N_SYMBOLS + 1, (batch_size, MAX_LEN), generator=generator)
    positions = torch.arange(MAX_LEN)[None, :]
    pad_mask = positions >= lengths[:, None]                       # True on padding
    src = src.masked_fill(pad_mask, PAD_ID)
    same = (src[:, :, None] == src[:, None, :]) & ~pad_mask[:, None, :]
    same &= ~torch.eye(MAX_LEN, dtype=torch.bool)[None]
    tags = same.any(-1).long().masked_fill(pad_mask, -100)
    return src.t().contiguous(), tags.t().contiguous(), pad_mask


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(pos * div)
        pe[:, 0, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def forward(self, x):                       # x: (T, B, D)
        return x + self.pe[: x.size(0)]


class Tagger(nn.Module):
    def __init__(self, d_model=48, nhead=4, num_layers=2, dim_ff=96, n_tags=2):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(N_SYMBOLS + 1, d_model, padding_idx=PAD_ID)
        self.pos_encoder = PositionalEncoding(d_model, MAX_LEN)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_ff, dropout=0.0, batch_first=False)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.decoder = nn.Linear(d_model, n_tags)

    def forward(self, src, src_key_padding_mask):
        h = self.embedding(src) * math.sqrt(self.d_model)
        h = self.pos_encoder(h)
        h = self.encoder(h, src_key_padding_mask=src_key_padding_mask)
        return self.decoder(h)                  # (T, B, n_tags)


def run(seed, steps, batch_size=32, lr=2e-3):
    torch.manual_seed(seed)
    data_rng = torch.Generator().manual_seed(seed * 31 + 5)
    held_out = sample_batch(data_rng, 256)

    model = Tagger()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss(ignore_index=-100)

    losses = []
    for step in range(steps):
        src, tags, pad_mask = sample_batch(data_rng, batch_size)
        model.train()
        optimizer.zero_grad()
        out = model(src, pad_mask)
        loss = criterion(out.reshape(-1, out.size(-1)), tags.reshape(-1))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: train loss {sum(losses[-50:]) / 50:.4f}")

    model.eval()
    with torch.no_grad():
        src, tags, pad_mask = held_out
        out = model(src, pad_mask)
        val_loss = criterion(out.reshape(-1, out.size(-1)), tags.reshape(-1)).item()
        keep = tags != -100
        acc = (out.argmax(-1)[keep] == tags[keep]).float().mean().item()
    print(f"held-out: loss {val_loss:.4f}, tag accuracy {acc:.3f}")
    n_tail = max(1, steps // 10)
    return losses[0], sum(losses[-n_tail:]) / n_tail, val_loss


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=250)
    cli = parser.parse_args()
    first, train, val = run(cli.seed, cli.steps)
    result = {"first_loss": first, "train_loss": train, "val_loss": val}
    result = {k: v if math.isfinite(v) else "nan" for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))
