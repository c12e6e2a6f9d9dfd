"""encoder_healthy.py with a data bug instead of a model bug: half of the training labels are
replaced by random ones (think of a broken label join). The model memorises them: the training loss
keeps falling and training accuracy (on the noisy labels) rises, while held-out accuracy stays near
chance. No single component is at fault.

Run: python sample_programs/encoder_label_noise.py [--steps 1200] [--seed 0]
"""

import argparse
import json
import math

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, SEQ_LEN, CLASSES = 48, 16, 4
CLS, MARK = 1, 2
KEYS = torch.tensor([3, 4, 5, 6])
FIRST_FILLER = 7


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        attn = scores.softmax(dim=-1)
        self.last_attn = attn.detach()
        out = (attn @ v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self, vocab: int, seq_len: int, dim: int, heads: int, layers: int,
                 classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


def make_dataset(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(FIRST_FILLER, VOCAB, (n, SEQ_LEN), generator=gen)
    tokens[:, 0] = CLS
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    for i in range(n):
        mark = int(torch.randint(1, SEQ_LEN - 1, (1,), generator=gen))
        free = [p for p in range(1, SEQ_LEN) if p not in (mark, mark + 1)]
        picks = torch.randperm(len(free), generator=gen)[:CLASSES - 1]
        tokens[i, mark], tokens[i, mark + 1] = MARK, KEYS[labels[i]]
        others = [k for k in range(CLASSES) if k != labels[i]]
        for j, p in enumerate(picks.tolist()):
            tokens[i, free[p]] = KEYS[others[j]]
    return tokens, labels


@torch.no_grad()
def accuracy(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = (model(tokens).argmax(-1) == labels).float().mean().item()
    model.train()
    return correct


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint", default=None, help="save losses and weights here")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_x, train_y = make_dataset(gen, 4096)
    eval_x, eval_y = make_dataset(gen, 1024)
    relabel = torch.rand(len(train_y), generator=gen) < 0.5
    train_y[relabel] = torch.randint(0, CLASSES, (int(relabel.sum()),), generator=gen)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train_x, train_y), batch_size=args.batch_size,
        shuffle=True, drop_last=True,
    )

    model = Encoder(VOCAB, SEQ_LEN, dim=64, heads=4, layers=2, classes=CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    losses: list[float] = []
    step = 0
    while step < args.steps:
        for tokens, labels in loader:
            step += 1
            logits = model(tokens)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step % 100 == 0 or step == 1:
                acc = (logits.argmax(-1) == labels).float().mean().item()
                print(f"step {step:4d}  loss {loss.item():.4f}  acc {acc:.2f}")
            if step == args.steps:
                break

    tail = losses[-max(1, len(losses) // 10):]
    result = {
        "final_loss": sum(tail) / len(tail),
        "train_acc": accuracy(model, train_x, train_y),
        "eval_acc": accuracy(model, eval_x, eval_y),
        "nan_step": next((i for i, v in enumerate(losses, 1) if not math.isfinite(v)), None),
        "steps": len(losses),
    }
    if args.checkpoint:
        torch.save({"losses": losses, "states": [model.state_dict()]}, args.checkpoint)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
