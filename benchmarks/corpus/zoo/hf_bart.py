"""Sequence-to-sequence reversal with a tiny BART trained from scratch (teacher forcing).

The encoder reads ``w1 ... wn </s>``; the decoder must emit ``wn ... w1 </s>``. Solving it needs
the decoder's cross-attention to find the mirrored source position. AdamW with a short linear
warmup, decoder inputs made by shifting the labels right, loss from the model (``labels=``).
"""

import argparse
import json
import math

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import BartConfig, BartForConditionalGeneration
from transformers import logging as tf_logging

tf_logging.set_verbosity_error()

PAD, BOS, EOS = 0, 1, 2
FIRST_WORD = 3
VOCAB = 24
SRC_LEN = 8


class ReversalData:
    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed * 1009 + 17)

    def sample(self, batch_size):
        words = torch.randint(FIRST_WORD, VOCAB, (batch_size, SRC_LEN), generator=self.gen)
        eos = torch.full((batch_size, 1), EOS)
        src = torch.cat([words, eos], dim=1)
        labels = torch.cat([words.flip(1), eos], dim=1)
        decoder_input_ids = torch.cat([torch.full((batch_size, 1), EOS), labels[:, :-1]], dim=1)
        return {
            "input_ids": src,
            "attention_mask": torch.ones_like(src),
            "decoder_input_ids": decoder_input_ids,
            "labels": labels,
        }


def make_model():
    config = BartConfig(
        vocab_size=VOCAB,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
        forced_eos_token_id=None,
        scale_embedding=False,
        attn_implementation="eager",
    )
    return BartForConditionalGeneration(config)


def train(args):
    torch.manual_seed(args.seed)
    data = ReversalData(args.seed)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = 10
    scheduler = LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    val_batch = data.sample(256)
    losses = []
    model.train()
    for step in range(1, args.steps + 1):
        batch = data.sample(args.batch_size)
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step == 1 or step % 50 == 0:
            print(f"step {step}/{args.steps}: loss {losses[-1]:.3f}")

    model.eval()
    with torch.no_grad():
        out = model(**val_batch)
        val_loss = out.loss.item()
        exact = (out.logits.argmax(-1) == val_batch["labels"]).all(dim=1).float().mean().item()
    print(f"held-out: loss {val_loss:.3f}, exact-match (teacher forced) {exact:.2%}")
    return losses, val_loss


def main():
    parser = argparse.ArgumentParser(description="tiny BART reversal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    losses, val_loss = train(args)
    tail = losses[-max(1, len(losses) // 10):]
    result = {
        "first_loss": losses[0],
        "train_loss": sum(tail) / len(tail),
        "val_loss": val_loss,
    }
    result = {k: v if math.isfinite(v) else "nan" for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
