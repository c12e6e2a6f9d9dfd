"""Sorting digit sequences with the full nn.Transformer (encoder-decoder), teacher forcing.

The source is a padded batch of 4..10 digits; the decoder reads <bos> + the sorted digits and
predicts the sorted digits + <eos>. Causal target mask from generate_square_subsequent_mask,
key-padding masks on source and target, label smoothing, Adam with a warmup + inverse-square-root
schedule (LambdaLR) and gradient-norm clipping.
"""

import argparse
import json
import math

import torch
import torch.nn as nn

PAD, BOS, EOS = 0, 1, 2
FIRST_DIGIT = 3
N_DIGITS = 10
VOCAB = FIRST_DIGIT + N_DIGITS
MIN_LEN, MAX_LEN = 4, 10


def make_batch(gen, batch_size):
    """src (B, MAX_LEN), tgt_in (B, MAX_LEN + 1), tgt_out (B, MAX_LEN + 1), all PAD-padded."""
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (batch_size,), generator=gen)
    digits = torch.randint(FIRST_DIGIT, VOCAB, (batch_size, MAX_LEN), generator=gen)
    pos = torch.arange(MAX_LEN)[None, :]
    pad = pos >= lengths[:, None]
    src = digits.masked_fill(pad, PAD)
    # padding sorts last once it is given a key above every digit
    sorted_digits = src.masked_fill(pad, VOCAB).sort(dim=1).values.masked_fill(pad, PAD)
    tgt_in = torch.full((batch_size, MAX_LEN + 1), PAD, dtype=torch.long)
    tgt_out = torch.full((batch_size, MAX_LEN + 1), PAD, dtype=torch.long)
    tgt_in[:, 0] = BOS
    tgt_in[:, 1:] = sorted_digits
    tgt_out[:, :MAX_LEN] = sorted_digits
    tgt_out[torch.arange(batch_size), lengths] = EOS
    return src, tgt_in, tgt_out


class Seq2SeqTransformer(nn.Module):
    def __init__(self, d_model=32, nhead=4, layers=2, ff=64):
        super().__init__()
        self.d_model = d_model
        self.src_tok = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        self.tgt_tok = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        self.pos = nn.Embedding(MAX_LEN + 1, d_model)
        self.transformer = nn.Transformer(
            d_model=d_model, nhead=nhead, num_encoder_layers=layers,
            num_decoder_layers=layers, dim_feedforward=ff, dropout=0.0, batch_first=True,
        )
        self.generator = nn.Linear(d_model, VOCAB)

    def embed(self, table, tokens):
        positions = torch.arange(tokens.size(1), device=tokens.device)
        return table(tokens) * math.sqrt(self.d_model) + self.pos(positions)[None]

    def forward(self, src, tgt_in):
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt_in.size(1))
        src_pad = src == PAD
        tgt_pad = tgt_in == PAD
        out = self.transformer(
            self.embed(self.src_tok, src), self.embed(self.tgt_tok, tgt_in),
            tgt_mask=tgt_mask, src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad,
        )
        return self.generator(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(10_000 + args.seed)
    val_batch = make_batch(gen, 256)

    model = Seq2SeqTransformer()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    warmup = max(1, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warmup, then inverse square root
        optimizer, lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1))))
    criterion = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=0.1)

    losses = []
    model.train()
    for step in range(args.steps):
        src, tgt_in, tgt_out = make_batch(gen, args.batch_size)
        logits = model(src, tgt_in)
        loss = criterion(logits.reshape(-1, VOCAB), tgt_out.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  lr {scheduler.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        src, tgt_in, tgt_out = val_batch
        logits = model(src, tgt_in)
        val_loss = criterion(logits.reshape(-1, VOCAB), tgt_out.reshape(-1)).item()
        keep = tgt_out != PAD
        acc = (logits.argmax(-1)[keep] == tgt_out[keep]).float().mean().item()
    print(f"val loss {val_loss:.4f}  teacher-forced token accuracy {acc:.3f}")

    tail = max(1, len(losses) // 10)
    result = {"first_loss": losses[0], "train_loss": sum(losses[-tail:]) / tail,
              "val_loss": val_loss}
    result = {k: (v if math.isfinite(v) else "nan") for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
