"""A transformers DeBERTa-v2 sequence classifier, built from a small config, on a relation task.

``DebertaV2ForSequenceClassification`` with random weights (no download, no tokenizer): relative
positions only (``position_biased_input=False``), disentangled attention with both the
content-to-position and position-to-content terms (``pos_att_type=["c2p", "p2c"]``), unbucketed
relative distances, a LayerNorm on the relative embeddings, the context pooler on the first token.

Task: a ``[CLS]`` token, then 9..24 filler tokens among which one ``A`` and one ``B`` are placed at
random, then padding (``attention_mask`` 0) up to the longest sequence of the batch. The class
says whether ``A`` comes before ``B`` and how far apart they are (5 distance bands, 10
classes): the classifier must relate two tokens by their relative position, which only the
disentangled attention can see. A few "decoy" tokens ``a`` and ``b`` that look like ``A``/``B``
but do not count make the lookup content-sensitive.

The logits come from the model; the loss is computed here with ``F.cross_entropy`` and label
smoothing 0.1. AdamW with weight decay, a linear warmup then a linear decay
(``get_linear_schedule_with_warmup``). Validation: plain cross-entropy on a fixed held-out set.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from transformers import (
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    get_linear_schedule_with_warmup,
)

PAD, CLS, A, B, DECOY_A, DECOY_B = 0, 1, 2, 3, 4, 5
FIRST_FILLER = 6
VOCAB = 24
MIN_LEN, MAX_LEN = 9, 24
BANDS = (1, 3, 6, 10)  # |pa - pb| = 1, 2..3, 4..6, 7..10, > 10
N_CLASSES = 2 * (len(BANDS) + 1)
BATCH = 32
LR = 2e-3
WARMUP = 15
N_VAL = 256
INIT = 0.06  # DeBERTa's default 0.02 leaves the attention uniform for a long plateau


def make_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (n,), generator=g)
    width = int(lengths.max()) + 1
    ids = torch.full((n, width), PAD, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    labels = torch.empty(n, dtype=torch.long)
    for i in range(n):
        length = int(lengths[i])
        body = torch.randint(FIRST_FILLER, VOCAB, (length,), generator=g)
        decoys = torch.rand(length, generator=g) < 0.15
        body[decoys] = torch.randint(DECOY_A, DECOY_B + 1, (int(decoys.sum()),), generator=g)
        pa, pb = torch.randperm(length, generator=g)[:2].tolist()
        body[pa], body[pb] = A, B
        ids[i, 0] = CLS
        ids[i, 1:length + 1] = body
        mask[i, :length + 1] = 1
        band = sum(int(abs(pa - pb) > b) for b in BANDS)
        labels[i] = (len(BANDS) + 1) * int(pa < pb) + band
    return ids, mask, labels


def build_model() -> DebertaV2ForSequenceClassification:
    config = DebertaV2Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, max_position_embeddings=64, type_vocab_size=0,
        relative_attention=True, max_relative_positions=32, position_buckets=-1,
        pos_att_type=["c2p", "p2c"], position_biased_input=False, norm_rel_ebd="layer_norm",
        share_att_key=False, pad_token_id=PAD, num_labels=N_CLASSES, pooler_dropout=0.0,
        pooler_hidden_act="gelu", pooler_hidden_size=64, cls_dropout=0.0, initializer_range=INIT,
    )
    return DebertaV2ForSequenceClassification(config)


def as_json_number(x: float):
    return x if math.isfinite(x) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(4242 + args.seed)
    val_ids, val_mask, val_labels = make_batch(N_VAL, g)

    model = build_model()
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.98), eps=1e-6)
    scheduler = get_linear_schedule_with_warmup(optimizer, WARMUP, args.steps)

    losses = []
    model.train()
    for step in range(args.steps):
        ids, mask, labels = make_batch(BATCH, g)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % 25 == 0:
            print(f"step {step:4d}  loss {losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=val_ids, attention_mask=val_mask).logits
        val_loss = F.cross_entropy(logits, val_labels).item()
        val_acc = (logits.argmax(-1) == val_labels).float().mean().item()
    print(f"val loss {val_loss:.4f}  val acc {val_acc:.3f}")
    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": as_json_number(losses[0]),
        "train_loss": as_json_number(sum(losses[-tail:]) / tail),
        "val_loss": as_json_number(val_loss),
    }))


if __name__ == "__main__":
    main()
