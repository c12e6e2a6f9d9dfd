"""Two-layer RoBERTa for multiple choice from a config (random init): which option fits the passage.

transformers' RobertaForMultipleChoice scores each (passage, option) pair on its own (the
choices are flattened into the batch, the pooler's first-token vector goes through a one-unit
classifier) and takes a cross-entropy over the choices; padded pairs carry an attention mask.
AdamW with the usual no-decay group (biases, LayerNorm weights),
``get_cosine_schedule_with_warmup`` and clip_grad_norm_. The words fall into topics; a passage
mostly talks about one topic among random other words, the right option's two words are from
that topic and each distractor's from another one (so every pair's score must relate the option
to the passage across the separator).
"""

import argparse
import json
import math

import torch
import transformers

TOPICS, PER_TOPIC = 6, 7
VOCAB = 3 + TOPICS * PER_TOPIC  # 0 = <s>, 1 = <pad>, 2 = </s>, then the topics' words
BOS, PAD, EOS = 0, 1, 2
CHOICES = 4
OPTION_LEN = 2
PASSAGE_LEN = (9, 14)
ON_TOPIC = 0.7  # share of a passage's words drawn from its topic (the rest: any topic)
SEQ = 1 + PASSAGE_LEN[1] + 2 + OPTION_LEN + 1  # <s> passage </s></s> option </s>


def words(topic, n, gen):
    return 3 + topic * PER_TOPIC + torch.randint(0, PER_TOPIC, (n,), generator=gen)


def make_batch(gen, batch_size):
    """(input_ids, attention_mask, labels) of shape (batch, CHOICES, SEQ): the passage mostly
    talks about one topic; the right option's words are from that topic, each distractor's from
    another one."""
    ids = torch.full((batch_size, CHOICES, SEQ), PAD, dtype=torch.long)
    labels = torch.randint(0, CHOICES, (batch_size,), generator=gen)
    for b in range(batch_size):
        length = int(torch.randint(PASSAGE_LEN[0], PASSAGE_LEN[1] + 1, (1,), generator=gen))
        topic = int(torch.randint(0, TOPICS, (1,), generator=gen))
        on = torch.rand(length, generator=gen) < ON_TOPIC
        anywhere = 3 + torch.randint(0, TOPICS * PER_TOPIC, (length,), generator=gen)
        passage = torch.where(on, words(topic, length, gen), anywhere)
        others = [t for t in range(TOPICS) if t != topic]
        wrong = torch.randperm(len(others), generator=gen)
        for c in range(CHOICES):
            t = topic if c == int(labels[b]) else others[int(wrong[c])]
            row = torch.cat([torch.tensor([BOS]), passage, torch.tensor([EOS, EOS]),
                             words(t, OPTION_LEN, gen), torch.tensor([EOS])])
            ids[b, c, : len(row)] = row
    return ids, (ids != PAD).long(), labels


def build_model():
    config = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=SEQ + 2, type_vocab_size=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.05)
    return transformers.RobertaForMultipleChoice(config)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    transformers.set_seed(args.seed)
    gen = torch.Generator().manual_seed(4242 + args.seed)
    val_batches = [make_batch(gen, 128) for _ in range(2)]

    model = build_model()
    no_decay = ("bias", "LayerNorm.weight")
    grouped = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(grouped, lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = transformers.get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=args.steps // 10, num_training_steps=args.steps)

    history = []
    for step in range(args.steps):
        model.train()
        input_ids, attention_mask, labels = make_batch(gen, args.batch_size)
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        history.append(out.loss.item())
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}: loss {sum(history[-25:]) / 25:.4f}")

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
