"""A tiny T5 learns to sort: ``7 3 9 3 </s>`` -> ``3 3 7 9 </s>`` (teacher forcing).

Sources have 5 to 9 word tokens, right-padded, with an attention mask; labels are the sorted
words plus ``</s>``, padded with -100. The model is built from a small ``T5Config`` (random
init, relative position buckets, eager attention) and computes its own loss from ``labels=``
(it shifts them right into the decoder inputs itself). A fixed training set is served by a
``DataLoader`` and cycled for as many epochs as the step budget needs; AdamW with a linear
warmup-then-decay schedule.
"""

import argparse
import json
import math

import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import T5Config, T5ForConditionalGeneration, get_linear_schedule_with_warmup
from transformers import logging as hf_logging

hf_logging.set_verbosity_error()

PAD_ID, EOS_ID = 0, 1
LOWEST_WORD, VOCAB = 2, 20
MIN_WORDS, MAX_WORDS = 5, 9
IGNORE = -100


def sorting_examples(count, seed):
    """(input_ids, attention_mask, labels) of ``count`` sorting problems, reproducible."""
    g = torch.Generator().manual_seed(10_007 * seed + 3)
    width = MAX_WORDS + 1
    input_ids = torch.full((count, width), PAD_ID)
    labels = torch.full((count, width), IGNORE)
    lengths = torch.randint(MIN_WORDS, MAX_WORDS + 1, (count,), generator=g)
    words = torch.randint(LOWEST_WORD, VOCAB, (count, MAX_WORDS), generator=g)
    for row, n in enumerate(lengths.tolist()):
        seq = words[row, :n]
        input_ids[row, :n] = seq
        input_ids[row, n] = EOS_ID
        labels[row, :n] = seq.sort().values
        labels[row, n] = EOS_ID
    return input_ids, (input_ids != PAD_ID).long(), labels


def build_model():
    config = T5Config(
        vocab_size=VOCAB,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        attn_implementation="eager",
    )
    return T5ForConditionalGeneration(config)


def run(opts):
    torch.manual_seed(opts.seed)
    train_set = TensorDataset(*sorting_examples(opts.train_size, opts.seed))
    loader = DataLoader(train_set, batch_size=opts.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(opts.seed))
    val_ids, val_mask, val_labels = sorting_examples(512, opts.seed + 1000)

    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=opts.steps // 10, num_training_steps=opts.steps)

    history = []
    model.train()
    while len(history) < opts.steps:
        for input_ids, attention_mask, labels in loader:
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            history.append(out.loss.item())
            if len(history) % 40 == 1:
                print(f"[{len(history):3d}] loss={history[-1]:.4f}")
            if len(history) == opts.steps:
                break

    model.eval()
    with torch.no_grad():
        out = model(input_ids=val_ids, attention_mask=val_mask, labels=val_labels)
        scored = val_labels != IGNORE
        right = (out.logits.argmax(-1) == val_labels) & scored
        token_acc = right.sum().item() / scored.sum().item()
    print(f"validation loss={out.loss.item():.4f} token accuracy={token_acc:.3f}")
    return history, out.loss.item()


def main():
    parser = argparse.ArgumentParser(description="tiny T5 learns to sort token sequences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=3e-3)
    opts = parser.parse_args()

    history, val_loss = run(opts)
    last = history[-max(1, len(history) // 10):]
    numbers = {"first_loss": history[0], "train_loss": sum(last) / len(last),
               "val_loss": val_loss}
    print("CORPUS_RESULT " + json.dumps(
        {k: (v if math.isfinite(v) else "nan") for k, v in numbers.items()}))


if __name__ == "__main__":
    main()
