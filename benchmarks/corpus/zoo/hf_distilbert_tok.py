"""Token classification with a randomly initialised DistilBERT (transformers, config only).

Quicksort-style partition tagging: each token of a padded sequence is tagged by how it compares
with the sequence's last token, the pivot (smaller / equal / larger), so every tag needs attention
to another position; padding is excluded through the attention mask and labelled -100. AdamW
with the usual weight-decay groups (no decay on biases and LayerNorm weights), linear
warmup/decay schedule, gradient clipping.
"""

import argparse
import json
import math

import torch
from transformers import (
    DistilBertConfig,
    DistilBertForTokenClassification,
    get_linear_schedule_with_warmup,
)

PAD_ID = 0
N_SYMBOLS = 10          # symbols are 1..N_SYMBOLS
MIN_LEN, MAX_LEN = 8, 20
N_TAGS = 3


def sample(gen, batch_size):
    """input_ids, attention_mask, labels: (batch, MAX_LEN) each."""
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (batch_size,), generator=gen)
    ids = torch.randint(1, N_SYMBOLS + 1, (batch_size, MAX_LEN), generator=gen)
    attention_mask = (torch.arange(MAX_LEN)[None, :] < lengths[:, None]).long()
    ids = ids * attention_mask
    pivot = ids.gather(1, lengths[:, None] - 1)
    labels = (torch.sign(ids - pivot) + 1).masked_fill(attention_mask == 0, -100)
    return ids, attention_mask, labels


def param_groups(model, weight_decay):
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    decay, skip = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (skip if any(nd in name for nd in no_decay) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": skip, "weight_decay": 0.0}]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(4242 + args.seed)
    val = sample(gen, 256)

    config = DistilBertConfig(
        vocab_size=N_SYMBOLS + 1, max_position_embeddings=MAX_LEN, n_layers=2, n_heads=4,
        dim=64, hidden_dim=128, dropout=0.0, attention_dropout=0.0, num_labels=N_TAGS,
        pad_token_id=PAD_ID,
    )
    model = DistilBertForTokenClassification(config)
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=args.steps // 10, num_training_steps=args.steps)

    losses = []
    model.train()
    for step in range(args.steps):
        ids, attention_mask, labels = sample(gen, args.batch_size)
        out = model(input_ids=ids, attention_mask=attention_mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
        if step % 40 == 0:
            print(f"step {step}: loss {losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        ids, attention_mask, labels = val
        out = model(input_ids=ids, attention_mask=attention_mask, labels=labels)
        keep = labels != -100
        acc = (out.logits.argmax(-1)[keep] == labels[keep]).float().mean().item()
    val_loss = out.loss.item()
    print(f"validation: loss {val_loss:.4f}, accuracy {acc:.3f}")

    tail = max(1, args.steps // 10)
    result = {"first_loss": losses[0], "train_loss": sum(losses[-tail:]) / tail,
              "val_loss": val_loss}
    print("CORPUS_RESULT " + json.dumps(
        {k: v if math.isfinite(v) else "nan" for k, v in result.items()}))


if __name__ == "__main__":
    main()
