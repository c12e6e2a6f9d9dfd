"""A small Conformer classifying the order in which three cue frames occur in noisy frame sequences.

Conformer blocks (macaron half-step feed-forward modules, multi-head self-attention with a learned
clipped relative-position bias per head, a convolution module: pointwise conv + GLU, depthwise
conv, BatchNorm1d, SiLU, pointwise conv; a final LayerNorm) over a Conv1d frame subsampler,
masked mean pooling over valid frames and a linear classifier. Sequences have variable lengths
(key-padding mask filled with -inf before torch.softmax). SGD with Nesterov momentum, a
warmup + cosine LambdaLR schedule and gradient-norm clipping.
"""

import argparse
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURES = 12
FRAMES = (16, 28)
CUES = 3
ORDERS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
MAX_REL = 8


def make_batch(gen, cues, batch_size):
    """(frames, lengths mask, labels): noise frames with the three cue frames placed at random
    (ordered) positions; the label is the order in which the cues occur."""
    n = FRAMES[1]
    lengths = torch.randint(FRAMES[0], n + 1, (batch_size, 1), generator=gen)
    mask = torch.arange(n)[None, :] < lengths
    x = 0.8 * torch.randn(batch_size, n, FEATURES, generator=gen)
    labels = torch.randint(0, len(ORDERS), (batch_size,), generator=gen)
    for b in range(batch_size):
        slots = torch.randperm(int(lengths[b]), generator=gen)[:CUES].sort().values
        for slot, cue in zip(slots.tolist(), ORDERS[int(labels[b])], strict=True):
            x[b, slot] += cues[cue]
    return x * mask[..., None], mask, labels


class FeedForwardModule(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.w1 = nn.Linear(dim, mult * dim)
        self.w2 = nn.Linear(mult * dim, dim)

    def forward(self, x):
        return self.w2(F.silu(self.w1(self.norm(x))))


class RelPositionSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.d_k = heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.rel_bias = nn.Embedding(2 * MAX_REL + 1, heads)

    def forward(self, x, mask):
        b, n, d = x.shape
        h = self.norm(x)
        q = self.linear_q(h).view(b, n, self.heads, self.d_k).transpose(1, 2)
        k = self.linear_k(h).view(b, n, self.heads, self.d_k).transpose(1, 2)
        v = self.linear_v(h).view(b, n, self.heads, self.d_k).transpose(1, 2)
        pos = torch.arange(n)
        rel = (pos[None, :] - pos[:, None]).clamp(-MAX_REL, MAX_REL) + MAX_REL
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)
        scores = scores + self.rel_bias(rel).permute(2, 0, 1)[None]
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        return self.linear_out((attn @ v).transpose(1, 2).reshape(b, n, d))


class ConvolutionModule(nn.Module):
    def __init__(self, dim, kernel_size=7):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2,
                                        groups=dim)
        self.batch_norm = nn.BatchNorm1d(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x, mask):
        h = self.norm(x).masked_fill(~mask[..., None], 0.0).transpose(1, 2)
        h = F.glu(self.pointwise_conv1(h), dim=1)
        h = F.silu(self.batch_norm(self.depthwise_conv(h)))
        return self.pointwise_conv2(h).transpose(1, 2)


class ConformerBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ff1 = FeedForwardModule(dim)
        self.self_attn = RelPositionSelfAttention(dim, heads)
        self.conv = ConvolutionModule(dim)
        self.ff2 = FeedForwardModule(dim)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, x, mask):
        x = x + 0.5 * self.ff1(x)
        x = x + self.self_attn(x, mask)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x)


class ConformerClassifier(nn.Module):
    def __init__(self, dim=32, heads=4, depth=1):
        super().__init__()
        self.subsample = nn.Conv1d(FEATURES, dim, 3, padding=1)
        self.blocks = nn.ModuleList(ConformerBlock(dim, heads) for _ in range(depth))
        self.classifier = nn.Linear(dim, len(ORDERS))

    def forward(self, frames, mask):
        x = self.subsample(frames.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x, mask)
        weights = mask[..., None].float()
        return self.classifier((x * weights).sum(1) / weights.sum(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(555 + args.seed)
    cues = 2.5 * F.normalize(torch.randn(CUES, FEATURES, generator=gen), dim=-1) * math.sqrt(
        FEATURES) / 2
    val_batches = [make_batch(gen, cues, 128) for _ in range(2)]

    model = ConformerClassifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=1e-4)
    warmup = 10

    def lr_lambda(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    history = []
    for step in range(args.steps):
        model.train()
        frames, mask, labels = make_batch(gen, cues, args.batch_size)
        loss = F.cross_entropy(model(frames, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if (step + 1) % 25 == 0:
            print(f"step {step + 1:3d} | loss {sum(history[-25:]) / 25:.4f}")

    model.eval()
    with torch.no_grad():
        val_loss, correct = 0.0, 0
        for frames, mask, labels in val_batches:
            logits = model(frames, mask)
            val_loss += F.cross_entropy(logits, labels).item() / len(val_batches)
            correct += (logits.argmax(-1) == labels).sum().item()
    print(f"val loss {val_loss:.4f} | accuracy {correct / 256:.3f}")

    tail = max(1, args.steps // 10)
    result = {"first_loss": history[0], "train_loss": sum(history[-tail:]) / tail,
              "val_loss": val_loss}
    result = {k: (v if math.isfinite(v) else "nan") for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
