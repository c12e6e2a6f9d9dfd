"""One-layer ELECTRA-style sequence classifier from a config (random init): which marker wins.

transformers' ElectraForSequenceClassification (embedding_size < hidden_size, so the embeddings
go through ``embeddings_project``; the classification head is dense + GELU + out_proj on the
first token) with padded batches and an attention mask; the model computes its own loss from
``labels``. AdamW with the usual no-decay group (biases, LayerNorm weights),
``get_linear_schedule_with_warmup``, gradient accumulation over two micro-batches per optimizer
step and clip_grad_norm_. The label is the marker token that occurs most often among random
filler tokens; the first token is a [CLS] token.
"""

import argparse
import json
import math

import torch
import transformers

VOCAB = 32  # 0 = [PAD], 1 = [CLS], 2..5 = markers, 6.. = filler
PAD, CLS = 0, 1
MARKERS = 4
FILLER = range(2 + MARKERS, VOCAB)
SEQ_LEN = (14, 24)


def make_batch(gen, batch_size):
    """(input_ids, attention_mask, labels): each class's marker is sprinkled 0-3 times; the label
    is the marker that occurs most often (ties redrawn)."""
    n = SEQ_LEN[1]
    lengths = torch.randint(SEQ_LEN[0], n + 1, (batch_size, 1), generator=gen)
    attention_mask = (torch.arange(n)[None, :] < lengths).long()
    ids = torch.randint(FILLER.start, FILLER.stop, (batch_size, n), generator=gen)
    counts = torch.randint(0, 4, (batch_size, MARKERS), generator=gen)
    while True:
        tied = (counts == counts.max(1, keepdim=True).values).sum(1) > 1
        if not bool(tied.any()):
            break
        counts[tied] = torch.randint(0, 4, (int(tied.sum()), MARKERS), generator=gen)
    labels = counts.argmax(1)
    for b in range(batch_size):
        slots = 1 + torch.randperm(int(lengths[b]) - 1, generator=gen)
        markers = torch.repeat_interleave(torch.arange(MARKERS), counts[b]) + 2
        ids[b, slots[: len(markers)]] = markers
    ids[:, 0] = CLS
    return ids * attention_mask, attention_mask, labels


def build_model():
    config = transformers.ElectraConfig(
        vocab_size=VOCAB, embedding_size=32, hidden_size=64, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=SEQ_LEN[1],
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=MARKERS,
        pad_token_id=PAD)
    return transformers.ElectraForSequenceClassification(config)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--accumulation", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    transformers.set_seed(args.seed)
    gen = torch.Generator().manual_seed(2024 + args.seed)
    val_batches = [make_batch(gen, 128) for _ in range(2)]

    model = build_model()
    no_decay = ("bias", "LayerNorm.weight")
    grouped = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(grouped, lr=2e-3, eps=1e-6)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=args.steps // 10, num_training_steps=args.steps)

    history = []
    for step in range(args.steps):
        model.train()
        optimizer.zero_grad()
        step_loss = 0.0
        for _ in range(args.accumulation):
            input_ids, attention_mask, labels = make_batch(gen, args.micro_batch)
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            (out.loss / args.accumulation).backward()
            step_loss += out.loss.item() / args.accumulation
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        history.append(step_loss)
        if (step + 1) % 20 == 0:
            print(f"step {step + 1}: loss {sum(history[-20:]) / 20:.4f}")

    model.eval()
    with torch.no_grad():
        losses, correct = [], 0
        for input_ids, attention_mask, labels in val_batches:
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            losses.append(out.loss.item())
            correct += (out.logits.argmax(-1) == labels).sum().item()
    val_loss = sum(losses) / len(losses)
    print(f"eval loss {val_loss:.4f} accuracy {correct / 256:.3f}")

    tail = max(1, args.steps // 10)
    result = {"first_loss": history[0], "train_loss": sum(history[-tail:]) / tail,
              "val_loss": val_loss}
    result = {k: (v if math.isfinite(v) else "nan") for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
