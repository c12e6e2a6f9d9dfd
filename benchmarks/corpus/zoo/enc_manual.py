"""Pre-norm Transformer encoder classifier with attention written by hand.

Task: a [CLS]-prefixed, right-padded sequence of tokens; four "marker" tokens are sprinkled
among filler tokens and the label is the marker that occurs most often (strict majority). The
[CLS] position must gather the counts through attention, so the padding mask matters.
"""

import argparse
import json
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, CLS = 0, 1
N_MARKERS = 4
FIRST_MARKER = 2
VOCAB = 24


@dataclass
class Config:
    vocab_size: int = VOCAB
    max_len: int = 24
    d_model: int = 48
    n_heads: int = 4
    d_ff: int = 128
    n_layers: int = 2
    n_classes: int = N_MARKERS
    dropout: float = 0.0
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0


class SelfAttention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def _split(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x, key_mask):
        # x: (B, T, D); key_mask: (B, T) True where the token is real
        b, t, d = x.shape
        q = self._split(self.q_proj(x))
        k = self._split(self.k_proj(x))
        v = self._split(self.v_proj(x))
        scores = q @ k.transpose(-2, -1)
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores / math.sqrt(self.head_dim), -1)
        weights = self.drop(weights)
        ctx = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(ctx)


class FeedForward(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg)

    def forward(self, x, key_mask):
        x = x + self.attn(self.norm1(x), key_mask)
        x = x + self.ffn(self.norm2(x))
        return x


class EncoderClassifier(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.classifier = nn.Linear(cfg.d_model, cfg.n_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens):
        key_mask = tokens != PAD
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.tok_emb(tokens) + self.pos_emb(pos)[None]
        for layer in self.layers:
            h = layer(h, key_mask)
        return self.classifier(self.final_norm(h[:, 0]))


def make_batch(gen, n, cfg: Config):
    """Returns tokens (n, max_len) and labels (n,)."""
    tokens = torch.full((n, cfg.max_len), PAD, dtype=torch.long)
    labels = torch.empty(n, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(8, cfg.max_len, (1,), generator=gen))
        body = torch.randint(FIRST_MARKER + N_MARKERS, cfg.vocab_size, (length - 1,), generator=gen)
        n_marked = int(torch.randint(3, length - 1, (1,), generator=gen))
        where = torch.randperm(length - 1, generator=gen)[:n_marked]
        label = int(torch.randint(N_MARKERS, (1,), generator=gen))
        probs = torch.full((N_MARKERS,), 1.0)
        probs[label] = 2.0
        markers = torch.multinomial(probs, n_marked, replacement=True, generator=gen)
        counts = torch.bincount(markers, minlength=N_MARKERS)
        while counts[label] <= max(c for j, c in enumerate(counts.tolist()) if j != label):
            # relabel one occurrence of the strongest rival so the majority is strict
            rival = max((j for j in range(N_MARKERS) if j != label), key=lambda j: counts[j])
            markers[(markers == rival).nonzero()[0, 0]] = label
            counts = torch.bincount(markers, minlength=N_MARKERS)
        body[where] = FIRST_MARKER + markers
        labels[i] = label
        tokens[i, 0] = CLS
        tokens[i, 1:length] = body
    return tokens, labels


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "emb" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def warmup_cosine(total_steps: int, warmup_frac: float):
    warmup = max(1, int(total_steps * warmup_frac))

    def fn(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def finite_or_nan(x: float):
    return x if math.isfinite(x) else "nan"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    cfg = Config()
    data_gen = torch.Generator().manual_seed(1000 + args.seed)
    val_tokens, val_labels = make_batch(data_gen, 256, cfg)

    model = EncoderClassifier(cfg)
    optimizer = build_optimizer(model, cfg)
    schedule = warmup_cosine(args.steps, cfg.warmup_frac)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    losses = []
    model.train()
    for step in range(args.steps):
        tokens, labels = make_batch(data_gen, cfg.batch_size, cfg)
        logits = model(tokens)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.4f}  lr {scheduler.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        val_logits = model(val_tokens)
        val_loss = F.cross_entropy(val_logits, val_labels).item()
        val_acc = (val_logits.argmax(-1) == val_labels).float().mean().item()
    print(f"val loss {val_loss:.4f}  acc {val_acc:.3f}")

    tail = losses[-max(1, len(losses) // 10):]
    result = {
        "first_loss": finite_or_nan(losses[0]),
        "train_loss": finite_or_nan(sum(tail) / len(tail)),
        "val_loss": finite_or_nan(val_loss),
    }
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
