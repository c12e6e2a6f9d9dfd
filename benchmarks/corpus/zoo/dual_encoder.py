"""A contrastive dual encoder: match a query to its document among the batch (in-batch InfoNCE).

Two separate small transformer towers (hand-written pre-LN blocks: q/k/v Linear, key-padding
``masked_fill(-inf)``, ``torch.softmax``) read out at a leading [CLS] token, a projection and
L2 normalisation; a ``Similarity`` module holds the learnable CLIP-style log temperature and gives
the (queries x documents) logits; the loss is the symmetric ``F.cross_entropy`` over the batch.
RMSprop (the temperature in a param group without weight decay), linear warmup then cosine
decay (SequentialLR) and clip_grad_norm_. An item is a value for each of four
attributes; a query lists (attribute, value) token pairs in random order with a few filler pairs,
its document does the same in a wording of its own. The last two attributes share their value
tokens, so a bag of tokens is not enough: a tower must bind a value to the attribute token before
it.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

ATTRIBUTES, VALUES = 4, 6
FILLER_PAIRS = (0, 3)
PAIRS = ATTRIBUTES + FILLER_PAIRS[1]
# per tower: 0 = padding, 1..ATTRIBUTES = attribute tokens, ATTRIBUTES + 1 = filler attribute,
# then a block of VALUES value tokens per attribute (the last two attributes share one), [CLS]
PAD, FILLER = 0, ATTRIBUTES + 1
VALUE_BLOCKS = ATTRIBUTES - 1
VOCAB = ATTRIBUTES + 2 + VALUES * VALUE_BLOCKS + 1
CLS = VOCAB - 1
SEQ = 1 + 2 * PAIRS


def value_token(attribute, value):
    return ATTRIBUTES + 2 + min(attribute, VALUE_BLOCKS - 1) * VALUES + value


def describe(items, gen, value_map):
    """Token sequences (batch, SEQ): [CLS], then each item's (attribute, value) pairs and some
    filler pairs (the filler attribute with a random value token), shuffled; ``value_map[a]``
    permutes the values of attribute a (the tower's own wording)."""
    batch = items.shape[0]
    tokens = torch.full((batch, SEQ), PAD, dtype=torch.long)
    for b in range(batch):
        n_fill = int(torch.randint(FILLER_PAIRS[0], FILLER_PAIRS[1] + 1, (1,), generator=gen))
        pairs = [(1 + a, value_token(a, int(value_map[a][items[b, a]])))
                 for a in range(ATTRIBUTES)]
        pairs += [(FILLER, int(torch.randint(ATTRIBUTES + 2, CLS, (1,), generator=gen)))
                  for _ in range(n_fill)]
        order = torch.randperm(len(pairs), generator=gen)
        flat = [t for i in order for t in pairs[int(i)]]
        tokens[b, : 1 + len(flat)] = torch.tensor([CLS, *flat])
    return tokens


def make_batch(gen, batch_size, query_map, doc_map):
    items = torch.randint(0, VALUES, (batch_size, ATTRIBUTES), generator=gen)
    return describe(items, gen, query_map), describe(items, gen, doc_map)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, padding):
        B, L, D = x.shape
        h = self.heads

        def split(t):
            return t.view(B, L, h, D // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // h)
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(B, L, D))


class Layer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x, padding):
        x = x + self.attn(self.norm1(x), padding)
        return x + self.ff(self.norm2(x))


class Tower(nn.Module):
    def __init__(self, dim=48, heads=4, layers=2, out_dim=32):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.positions = nn.Embedding(SEQ, dim)
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, tokens):
        padding = tokens == PAD
        x = self.tokens(tokens) + self.positions(torch.arange(tokens.shape[1]))
        for layer in self.layers:
            x = layer(x, padding)
        return F.normalize(self.proj(self.norm(x[:, 0])), dim=-1)


class Similarity(nn.Module):
    """Cosine similarities times a learnable temperature (CLIP's log-parametrised scale)."""

    def __init__(self, init_temperature=0.1, max_scale=100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_scale = max_scale

    def forward(self, queries, docs):
        return self.log_scale.exp().clamp(max=self.max_scale) * queries @ docs.t()


class DualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.query_tower = Tower()
        self.doc_tower = Tower()
        self.similarity = Similarity()

    def forward(self, queries, docs):
        return self.similarity(self.query_tower(queries), self.doc_tower(docs))


def info_nce(logits):
    targets = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(99 + args.seed)
    query_map = [torch.randperm(VALUES, generator=gen) for _ in range(ATTRIBUTES)]
    doc_map = [torch.randperm(VALUES, generator=gen) for _ in range(ATTRIBUTES)]
    val_batches = [make_batch(gen, args.batch_size, query_map, doc_map) for _ in range(8)]

    model = DualEncoder()
    towers = [p for n, p in model.named_parameters() if not n.startswith("similarity.")]
    optimizer = torch.optim.RMSprop(
        [{"params": towers, "weight_decay": 1e-5},
         {"params": model.similarity.parameters(), "weight_decay": 0.0}],
        lr=args.lr, alpha=0.99, eps=1e-8)
    warmup = max(1, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps - warmup)],
        milestones=[warmup])

    history = []
    for step in range(args.steps):
        model.train()
        queries, docs = make_batch(gen, args.batch_size, query_map, doc_map)
        loss = info_nce(model(queries, docs))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}: loss {sum(history[-25:]) / 25:.4f}")

    model.eval()
    with torch.no_grad():
        losses, correct, total = [], 0, 0
        for queries, docs in val_batches:
            logits = model(queries, docs)
            losses.append(info_nce(logits).item())
            correct += (logits.argmax(1) == torch.arange(len(logits))).sum().item()
            total += len(logits)
    val_loss = sum(losses) / len(losses)
    print(f"eval loss {val_loss:.4f} recall@1 {correct / total:.3f} "
          f"temperature {1 / model.similarity.log_scale.exp().item():.4f}")

    tail = max(1, args.steps // 10)
    result = {"first_loss": history[0], "train_loss": sum(history[-tail:]) / tail,
              "val_loss": val_loss}
    result = {k: (v if math.isfinite(v) else "nan") for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
