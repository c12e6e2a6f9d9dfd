"""A tiny nanoGPT-style decoder trained as a causal LM on a copy task.

Each sample is  BOS a1 .. aN SEP a1 .. aN : the model learns to repeat the prompt after SEP.
Only the answer half is scored (prompt targets are -100). Validation generates the answer
greedily, token by token, and scores each step's prediction against the reference.
"""

import argparse
import json
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 24
    vocab_size: int = 18
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 48
    dropout: float = 0.0
    bias: bool = True


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        _, t = idx.size()
        assert t <= self.config.block_size
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100
            )
        return logits, loss


# data ---------------------------------------------------------------------------------------
N_SYM = 10          # symbols 0..9
BOS, SEP = 10, 11
PROMPT_LEN = 8


def get_batch(gen, batch_size):
    a = torch.randint(0, N_SYM, (batch_size, PROMPT_LEN), generator=gen)
    bos = torch.full((batch_size, 1), BOS)
    sep = torch.full((batch_size, 1), SEP)
    seq = torch.cat([bos, a, sep, a], dim=1)          # length 2 * PROMPT_LEN + 2
    x, y = seq[:, :-1].clone(), seq[:, 1:].clone()
    y[:, :PROMPT_LEN] = -100                          # do not score the random prompt
    return x, y


@torch.no_grad()
def generation_loss(model, gen, n):
    """Greedy-decode the answer and score each step's logits against the true next token."""
    x, y = get_batch(gen, n)
    ctx = x[:, :PROMPT_LEN + 1]                       # BOS prompt SEP
    answer = y[:, PROMPT_LEN:]
    total = 0.0
    for i in range(answer.size(1)):
        logits, _ = model(ctx)
        step_logits = logits[:, -1, :]
        total += F.cross_entropy(step_logits, answer[:, i]).item()
        ctx = torch.cat([ctx, step_logits.argmax(-1, keepdim=True)], dim=1)
    return total / answer.size(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = GPT(GPTConfig())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1
    )

    history = []
    for it in range(args.steps):
        xb, yb = get_batch(gen, args.batch_size)
        _, loss = model(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        history.append(loss.item())
        if it % 40 == 0:
            print(f"iter {it}: loss {history[-1]:.4f}")

    model.eval()
    val_loss = generation_loss(model, torch.Generator().manual_seed(10_000 + args.seed), 128)
    print(f"val (greedy generation) loss {val_loss:.4f}")

    def clean(v):
        return v if math.isfinite(v) else "nan"

    k = max(1, args.steps // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": clean(history[0]),
        "train_loss": clean(sum(history[-k:]) / k),
        "val_loss": clean(val_loss),
    }))


if __name__ == "__main__":
    main()
