"""A tiny nanoGPT-style causal decoder trained by next-token prediction on a copy task (healthy).

Task: sequences "[BOS] a1 .. a8 [SEP] a1 .. a8" of random tokens, trained as a plain language
model on every position. The first half is random, so the mean loss cannot go below
8/17 * ln(29) = 1.58; the second half is predictable by attending back 9 positions and copying.
Accuracy is scored on the second half: teacher-forced on training data, and by greedy generation
from the prompt "[BOS] a1 .. a8 [SEP]" on held-out data.
Run: python sample_programs/gpt_healthy.py [--steps 800] [--seed 0]
"""

import argparse
import json
import math

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, HALF = 32, 8
BOS, SEP = 1, 2
FIRST_SYMBOL = 3
BLOCK_SIZE = 2 * HALF + 1


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        mask = torch.tril(torch.ones(block_size, block_size))
        self.register_buffer("bias", mask.view(1, 1, block_size, block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 2, n_head: int = 4,
                 n_embd: int = 64) -> None:
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList(Block(n_embd, n_head, block_size) for _ in range(n_layer)),
                ln_f=nn.LayerNorm(n_embd),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.block_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx


def make_dataset(gen: torch.Generator, n: int) -> torch.Tensor:
    symbols = torch.randint(FIRST_SYMBOL, VOCAB, (n, HALF), generator=gen)
    bos, sep = torch.full((n, 1), BOS), torch.full((n, 1), SEP)
    return torch.cat([bos, symbols, sep, symbols], dim=1)


def inputs_and_targets(seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return seqs[:, :-1], seqs[:, 1:]


@torch.no_grad()
def teacher_forced_accuracy(model: GPT, seqs: torch.Tensor) -> float:
    model.eval()
    x, y = inputs_and_targets(seqs)
    pred = model(x).argmax(-1)
    model.train()
    return (pred[:, HALF + 1:] == y[:, HALF + 1:]).float().mean().item()


@torch.no_grad()
def generation_accuracy(model: GPT, seqs: torch.Tensor) -> float:
    model.eval()
    out = model.generate(seqs[:, : HALF + 2], HALF)
    model.train()
    return (out[:, HALF + 2:] == seqs[:, HALF + 2:]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint", default=None, help="save losses and weights here")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train = make_dataset(gen, 8192)
    evaluation = make_dataset(gen, 512)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train), batch_size=args.batch_size, shuffle=True,
        drop_last=True,
    )

    model = GPT(VOCAB, BLOCK_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=0.1)

    losses: list[float] = []
    step = 0
    while step < args.steps:
        for (seqs,) in loader:
            step += 1
            x, y = inputs_and_targets(seqs)
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            if step % 50 == 0 or step == 1:
                print(f"step {step:4d}  loss {loss.item():.4f}")
            if step == args.steps:
                break

    tail = losses[-max(1, len(losses) // 10):]
    result = {
        "final_loss": sum(tail) / len(tail),
        "train_acc": teacher_forced_accuracy(model, train[:2048]),
        "eval_acc": generation_accuracy(model, evaluation),
        "nan_step": next((i for i, v in enumerate(losses, 1) if not math.isfinite(v)), None),
        "steps": len(losses),
    }
    if args.checkpoint:
        torch.save({"losses": losses, "states": [model.state_dict()]}, args.checkpoint)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
