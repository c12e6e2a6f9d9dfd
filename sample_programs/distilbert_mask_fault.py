"""distilbert_healthy.py with one bug: the attention mask is built with the nn.MultiheadAttention
key_padding_mask convention (1 = padding) while transformers expects 1 = keep. Every attention
layer attends only to padding (or, for full-length rows, to nothing useful) and the model stays at
chance: the fault is in how the attention modules are fed
(distilbert.transformer.layer.*.attention), not in their weights.

Run: python sample_programs/distilbert_mask_fault.py [--steps 700] [--seed 0]
"""

import argparse
import json
import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DistilBertConfig, DistilBertForSequenceClassification

VOCAB, MAX_LEN, CLASSES = 64, 24, 4
PAD, CLS = 0, 1
KEYS = torch.tensor([3, 4, 5, 6])
FIRST_FILLER = 7


def make_dataset(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    input_ids = torch.randint(FIRST_FILLER, VOCAB, (n, MAX_LEN), generator=gen)
    lengths = torch.randint(12, MAX_LEN + 1, (n,), generator=gen)
    padding = torch.arange(MAX_LEN) >= lengths.unsqueeze(1)
    attention_mask = padding.long()
    input_ids[padding] = PAD
    input_ids[:, 0] = CLS
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    for i in range(n):
        keys = torch.cat([KEYS, KEYS[labels[i]].view(1)])
        where = torch.randperm(int(lengths[i]) - 1, generator=gen)[: len(keys)] + 1
        input_ids[i, where] = keys
    return input_ids, attention_mask, labels


@torch.no_grad()
def accuracy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             labels: torch.Tensor) -> float:
    model.eval()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.train()
    return (logits.argmax(-1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint", default=None, help="save losses and weights here")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train = make_dataset(gen, 4096)
    evaluation = make_dataset(gen, 1024)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*train), batch_size=args.batch_size, shuffle=True,
        drop_last=True,
    )

    config = DistilBertConfig(
        vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
        max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0,
        num_labels=CLASSES, pad_token_id=PAD,
    )
    model = DistilBertForSequenceClassification(config)
    for layer in model.distilbert.transformer.layer:
        for lin in (layer.attention.q_lin, layer.attention.k_lin):
            nn.init.normal_(lin.weight, std=config.initializer_range)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    losses: list[float] = []
    step = 0
    while step < args.steps:
        for input_ids, attention_mask, labels in loader:
            step += 1
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step % 50 == 0 or step == 1:
                acc = (logits.argmax(-1) == labels).float().mean().item()
                print(f"step {step:4d}  loss {loss.item():.4f}  acc {acc:.2f}")
            if step == args.steps:
                break

    tail = losses[-max(1, len(losses) // 10):]
    result = {
        "final_loss": sum(tail) / len(tail),
        "train_acc": accuracy(model, *train),
        "eval_acc": accuracy(model, *evaluation),
        "nan_step": next((i for i, v in enumerate(losses, 1) if not math.isfinite(v)), None),
        "steps": len(losses),
    }
    if args.checkpoint:
        torch.save({"losses": losses, "states": [model.state_dict()]}, args.checkpoint)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
