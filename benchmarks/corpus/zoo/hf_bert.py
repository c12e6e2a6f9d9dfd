"""Fine-tune a tiny, randomly initialised BERT on a synthetic "review sentiment" task.

Each example is a [CLS] ... [SEP] sequence of variable length, right-padded. Some tokens are
"positive" words, some "negative" words, the rest neutral; the label says which kind occurs
more often. Uses the usual Hugging Face recipe: AdamW with decay / no-decay parameter groups,
linear warmup + decay, gradient clipping, and the model's own loss (``labels=``).
"""

import argparse
import json
import math

import torch
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()

PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
POSITIVE = list(range(3, 7))
NEGATIVE = list(range(7, 11))
FIRST_NEUTRAL = 11
VOCAB_SIZE = 40
MAX_LEN = 20


def parse_args():
    p = argparse.ArgumentParser(description="tiny BERT sequence classification")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    return p.parse_args()


def synth_reviews(n, generator):
    """input_ids, attention_mask (1 = real token) and labels (1 = more positive than negative)."""
    input_ids = torch.full((n, MAX_LEN), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((n, MAX_LEN), dtype=torch.long)
    labels = torch.zeros(n, dtype=torch.long)
    pos = torch.tensor(POSITIVE)
    neg = torch.tensor(NEGATIVE)
    for i in range(n):
        length = int(torch.randint(6, MAX_LEN - 1, (1,), generator=generator))
        words = torch.randint(FIRST_NEUTRAL, VOCAB_SIZE, (length,), generator=generator)
        n_pos = int(torch.randint(0, 5, (1,), generator=generator))
        n_neg = int(torch.randint(0, 5, (1,), generator=generator))
        if n_pos == n_neg:
            n_pos += 1
        n_pos, n_neg = min(n_pos, length), min(n_neg, length - min(n_pos, length))
        slots = torch.randperm(length, generator=generator)
        words[slots[:n_pos]] = pos[torch.randint(len(POSITIVE), (n_pos,), generator=generator)]
        neg_words = neg[torch.randint(len(NEGATIVE), (n_neg,), generator=generator)]
        words[slots[n_pos:n_pos + n_neg]] = neg_words
        seq = torch.cat([torch.tensor([CLS_ID]), words, torch.tensor([SEP_ID])])
        input_ids[i, :len(seq)] = seq
        attention_mask[i, :len(seq)] = 1
        labels[i] = int(n_pos > n_neg)
    return input_ids, attention_mask, labels


def param_groups(model, weight_decay):
    no_decay = ("bias", "LayerNorm.weight")
    decay_params, other_params = [], []
    for name, param in model.named_parameters():
        (other_params if any(nd in name for nd in no_decay) else decay_params).append(param)
    return [
        {"params": decay_params, "weight_decay": weight_decay},
        {"params": other_params, "weight_decay": 0.0},
    ]


def clean(x):
    return x if math.isfinite(x) else "nan"


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 12345)

    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=MAX_LEN,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
        pad_token_id=PAD_ID,
    )
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config)

    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(
        optimizer,
        num_warmup_steps=int(args.warmup_ratio * args.steps),
        num_training_steps=args.steps,
    )

    val_ids, val_mask, val_labels = synth_reviews(256, gen)

    history = []
    model.train()
    for step in range(args.steps):
        input_ids, attention_mask, labels = synth_reviews(args.batch_size, gen)
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        loss = outputs.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        history.append(loss.item())
        if step % 40 == 0:
            lr_now = scheduler.get_last_lr()[0]
            print(f"[{step:>4}/{args.steps}] loss={history[-1]:.4f} lr={lr_now:.2e}")

    model.eval()
    with torch.no_grad():
        out = model(input_ids=val_ids, attention_mask=val_mask, labels=val_labels)
        val_loss = out.loss.item()
        acc = (out.logits.argmax(-1) == val_labels).float().mean().item()
    print(f"eval: loss={val_loss:.4f} accuracy={acc:.3f}")

    last = history[-max(1, len(history) // 10):]
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": clean(history[0]),
        "train_loss": clean(sum(last) / len(last)),
        "val_loss": clean(val_loss),
    }))


if __name__ == "__main__":
    main()
