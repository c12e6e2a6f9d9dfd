"""Set Transformer (Lee et al. 2019): the prototype held by the highest-scoring element of a set.

Hand-written multihead attention blocks (MAB, post-LayerNorm as in the paper, separate q/k/v/o
projections, key-padding mask via masked_fill(-1e9), Tensor.softmax); two induced set attention
blocks (ISAB: learned inducing points attend to the set, the set attends back) and pooling by
multihead attention (PMA: one learned seed query) feeding a linear classifier. Each element is a
noisy prototype vector plus a scalar score; sets of 3-12 elements are padded to a fixed length
with a boolean mask. RMSprop with an exponential LR decay and gradient-norm clipping.
"""

import argparse
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

N_CLASSES = 12
MAX_SET = 12
MIN_SET = 3
FEATURES = 8
NOISE = 0.3


def make_sets(gen, prototypes, batch_size):
    """Sets of (noisy prototype, score) elements; the label is the prototype of the element with
    the highest score. Padded slots are all zeros and masked out."""
    sizes = torch.randint(MIN_SET, MAX_SET + 1, (batch_size, 1), generator=gen)
    mask = torch.arange(MAX_SET)[None, :] < sizes
    ids = torch.randint(0, N_CLASSES, (batch_size, MAX_SET), generator=gen)
    scores = torch.randn(batch_size, MAX_SET, generator=gen)
    feats = prototypes[ids] + NOISE * torch.randn(batch_size, MAX_SET, FEATURES, generator=gen)
    x = torch.cat([feats, scores[..., None]], dim=-1) * mask[..., None]
    best = scores.masked_fill(~mask, float("-inf")).argmax(1)
    return x, mask, ids.gather(1, best[:, None]).squeeze(1)


class MAB(nn.Module):
    """Multihead attention block: H = LN(Q + MHA(Q, K)); out = LN(H + rFF(H))."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.ln0 = nn.LayerNorm(dim)
        self.rff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.ln1 = nn.LayerNorm(dim)

    def _heads(self, t):
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, queries, keys, key_mask=None):
        q = self._heads(self.q_proj(queries))
        k = self._heads(self.k_proj(keys))
        v = self._heads(self.v_proj(keys))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], -1e9)
        attn = scores.softmax(dim=-1)
        ctx = (attn @ v).transpose(1, 2).reshape(queries.shape)
        h = self.ln0(queries + self.o_proj(ctx))
        return self.ln1(h + self.rff(h))


class ISAB(nn.Module):
    def __init__(self, dim, heads, n_inducing):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, n_inducing, dim) / math.sqrt(dim))
        self.mab_in = MAB(dim, heads)
        self.mab_out = MAB(dim, heads)

    def forward(self, x, mask):
        summary = self.mab_in(self.inducing.expand(x.size(0), -1, -1), x, mask)
        return self.mab_out(x, summary)


class PMA(nn.Module):
    def __init__(self, dim, heads, n_seeds=1):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, n_seeds, dim) / math.sqrt(dim))
        self.mab = MAB(dim, heads)

    def forward(self, x, mask):
        return self.mab(self.seeds.expand(x.size(0), -1, -1), x, mask)


class SetTransformer(nn.Module):
    def __init__(self, dim=32, heads=4, n_inducing=8):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(FEATURES + 1, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.encoder = nn.ModuleList([ISAB(dim, heads, n_inducing), ISAB(dim, heads, n_inducing)])
        self.pool = PMA(dim, heads)
        self.classifier = nn.Linear(dim, N_CLASSES)

    def forward(self, x, mask):
        h = self.embed(x)
        for block in self.encoder:
            h = block(h, mask)
        pooled = self.pool(h, mask)
        return self.classifier(pooled.squeeze(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=48)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(4100 + args.seed)
    prototypes = torch.randn(N_CLASSES, FEATURES, generator=gen)
    val = make_sets(gen, prototypes, 384)

    model = SetTransformer()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99, eps=1e-6)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.995)

    history = []
    for step in range(args.steps):
        model.train()
        x, mask, labels = make_sets(gen, prototypes, args.batch_size)
        logits = model(x, mask)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if step % 40 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  lr {scheduler.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        x, mask, labels = val
        logits = model(x, mask)
        val_loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(-1) == labels).float().mean().item()
    print(f"val loss {val_loss:.4f}  val accuracy {accuracy:.3f}")

    tail = max(1, args.steps // 10)
    result = {"first_loss": history[0], "train_loss": sum(history[-tail:]) / tail,
              "val_loss": val_loss}
    result = {k: (v if math.isfinite(v) else "nan") for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
