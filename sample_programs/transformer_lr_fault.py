"""The transformer encoder of transformer_encoder.py with a realistic bug: someone gave the first
block's query projection its own param group "to learn attention faster", with a learning rate
100x the base. Everything else is identical to the healthy program.

Run: python sample_programs/transformer_lr_fault.py [--steps 150] [--seed 0]
"""

import argparse

import torch
from torch.nn import functional as F
from transformer_encoder import Encoder, make_batch


def build_optimizer(model: Encoder, lr: float) -> torch.optim.Optimizer:
    fast = list(model.blocks[0].attn.q_proj.parameters())
    fast_ids = {id(p) for p in fast}
    rest = [p for p in model.parameters() if id(p) not in fast_ids]
    return torch.optim.AdamW(
        [{"params": rest}, {"params": fast, "lr": lr * 100}],  # BUG: 100x for one projection
        lr=lr,
        weight_decay=0.01,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    vocab, seq = 32, 16
    model = Encoder(vocab, dim=32, heads=4, layers=2, classes=2)
    optimizer = build_optimizer(model, args.lr)

    for step in range(1, args.steps + 1):
        tokens, labels = make_batch(gen, 64, seq, vocab)
        logits = model(tokens)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0 or step == 1:
            acc = (logits.argmax(-1) == labels).float().mean().item()
            print(f"step {step:4d}  loss {loss.item():.4f}  acc {acc:.2f}")


if __name__ == "__main__":
    main()
