"""A small Mixture-of-Experts transformer tagger: how often does each token occur in its sequence.

Pre-LN encoder blocks whose attention is ``F.scaled_dot_product_attention`` with a boolean
key-padding mask and whose feed-forward is a sparse MoE layer: a linear router, softmax over the
experts, top-2 routing with renormalised gates, tokens dispatched to each expert by index, and
the Switch-style load-balancing auxiliary loss (experts x sum of dispatch fraction x mean router
probability) added to the tagging loss. Per-token ``F.cross_entropy`` with ``ignore_index`` on
the padding. Adam with the router in a param group of its own (a tenth of the LR), linear warmup
then inverse-square-root decay through LambdaLR, gradient accumulation over two micro-batches and
clip_grad_norm_. The label of a token is its number of occurrences in the (padded, variable
length) sequence, capped at 4.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 14  # 0 = padding, 1..13 = symbols
PAD = 0
MAX_COUNT = 4  # classes: 1, 2, 3, >=4 occurrences
SEQ_LEN = (16, 28)
IGNORE = -100


def make_batch(gen, batch_size):
    n = SEQ_LEN[1]
    lengths = torch.randint(SEQ_LEN[0], n + 1, (batch_size, 1), generator=gen)
    valid = torch.arange(n)[None, :] < lengths
    tokens = torch.randint(1, VOCAB, (batch_size, n), generator=gen) * valid
    counts = ((tokens[:, :, None] == tokens[:, None, :]) & valid[:, None, :]).sum(-1)
    labels = (counts.clamp(max=MAX_COUNT) - 1).masked_fill(~valid, IGNORE)
    return tokens, labels


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, key_padding):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        keep = ~key_padding[:, None, None, :]  # True = may attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Expert(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class MoE(nn.Module):
    """Top-2 routed experts; ``aux_loss`` holds the last forward's load-balancing loss."""

    def __init__(self, dim, hidden, experts, top_k=2):
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))
        self.top_k = top_k
        self.aux_loss = torch.zeros(())

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = F.softmax(self.router(flat), dim=-1)
        gates, chosen = probs.topk(self.top_k, dim=-1)
        gates = gates / gates.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * gates[token, slot, None])
        n_experts = len(self.experts)
        dispatched = F.one_hot(chosen[:, 0], n_experts).float().mean(0)
        self.aux_loss = n_experts * (dispatched * probs.mean(0)).sum()
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, dim, heads, hidden, experts):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.moe = MoE(dim, hidden, experts)

    def forward(self, x, key_padding):
        x = x + self.attn(self.ln1(x), key_padding)
        return x + self.moe(self.ln2(x))


class MoETagger(nn.Module):
    def __init__(self, dim=48, heads=4, hidden=64, experts=4, layers=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(SEQ_LEN[1], dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, experts) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, MAX_COUNT)

    def forward(self, tokens):
        key_padding = tokens == PAD
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, key_padding)
        return self.head(self.ln_f(x))

    def aux_loss(self):
        return sum(block.moe.aux_loss for block in self.blocks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--aux-weight", type=float, default=0.01)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(777 + args.seed)
    val_batches = [make_batch(gen, 128) for _ in range(2)]

    model = MoETagger()
    router = [p for n, p in model.named_parameters() if ".router." in n]
    rest = [p for n, p in model.named_parameters() if ".router." not in n]
    optimizer = torch.optim.Adam([{"params": rest},
                                  {"params": router, "lr": args.lr * 0.1}], lr=args.lr)
    warmup = max(1, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, math.sqrt(warmup / (s + 1))))

    history = []
    for step in range(args.steps):
        model.train()
        optimizer.zero_grad()
        step_loss = 0.0
        for _ in range(args.accumulation):
            tokens, labels = make_batch(gen, args.micro_batch)
            logits = model(tokens)
            loss = F.cross_entropy(logits.reshape(-1, MAX_COUNT), labels.reshape(-1),
                                   ignore_index=IGNORE)
            ((loss + args.aux_weight * model.aux_loss()) / args.accumulation).backward()
            step_loss += loss.item() / args.accumulation
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        history.append(step_loss)
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}: loss {sum(history[-25:]) / 25:.4f}")

    model.eval()
    with torch.no_grad():
        losses, correct, total = [], 0, 0
        for tokens, labels in val_batches:
            logits = model(tokens)
            losses.append(F.cross_entropy(logits.reshape(-1, MAX_COUNT), labels.reshape(-1),
                                          ignore_index=IGNORE).item())
            valid = labels != IGNORE
            correct += (logits.argmax(-1)[valid] == labels[valid]).sum().item()
            total += valid.sum().item()
    val_loss = sum(losses) / len(losses)
    print(f"eval loss {val_loss:.4f} accuracy {correct / total:.3f}")

    tail = max(1, args.steps // 10)
    result = {"first_loss": history[0], "train_loss": sum(history[-tail:]) / tail,
              "val_loss": val_loss}
    result = {k: (v if math.isfinite(v) else "nan") for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
