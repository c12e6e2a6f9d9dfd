"""One-step-ahead forecasting of noisy multi-sine series with a small causal transformer, MSE loss.

Hand-written pre-norm decoder blocks (separate q/k/v projections, a causal mask built per call with
torch.triu + masked_fill(-inf), torch.softmax), a linear patch-free value embedding with sinusoidal
positions, a regression head trained with nn.MSELoss (no classification anywhere). AdamW with a
cosine schedule and gradient-norm clipping.
"""

import argparse
import json
import math

import torch
import torch.nn as nn

SEQ_LEN = 32
N_WAVES = 2
NOISE = 0.05


def make_series(gen, batch_size):
    """(batch, SEQ_LEN + 1, 1): sums of sines with random frequency, amplitude and phase."""
    t = torch.arange(SEQ_LEN + 1, dtype=torch.float32)[None, None, :]
    freq = 0.02 + 0.1 * torch.rand(batch_size, N_WAVES, 1, generator=gen)
    amp = 0.5 + torch.rand(batch_size, N_WAVES, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(batch_size, N_WAVES, 1, generator=gen)
    x = (amp * torch.sin(2 * math.pi * freq * t + phase)).sum(1)
    x = x + NOISE * torch.randn(x.shape, generator=gen)
    return x.unsqueeze(-1)


def sinusoidal_positions(length, dim):
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(self.head_dim)
        future = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        ctx = torch.einsum("bhqk,bhkd->bhqd", weights, v)
        return self.out(ctx.permute(0, 2, 1, 3).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Forecaster(nn.Module):
    def __init__(self, dim=32, heads=4, depth=3, hidden=64):
        super().__init__()
        self.embed = nn.Linear(1, dim)
        self.register_buffer("positions", sinusoidal_positions(SEQ_LEN, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, series):
        h = self.embed(series) + self.positions[: series.size(1)]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(777 + args.seed)
    val_series = make_series(gen, 256)

    model = Forecaster()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    loss_fn = nn.MSELoss()

    history = []
    for step in range(args.steps):
        model.train()
        series = make_series(gen, args.batch_size)
        inputs, targets = series[:, :-1], series[:, 1:]
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"[{step + 1:4d}/{args.steps}] mse {sum(history[-50:]) / 50:.5f}")

    model.eval()
    with torch.no_grad():
        val_mse = loss_fn(model(val_series[:, :-1]), val_series[:, 1:]).item()
        naive = loss_fn(val_series[:, :-2], val_series[:, 1:-1]).item()
    print(f"val mse {val_mse:.5f} (repeat-last-value baseline {naive:.5f})")

    tail = max(1, args.steps // 10)
    result = {"first_loss": history[0], "train_loss": sum(history[-tail:]) / tail,
              "val_loss": val_mse}
    result = {k: v if math.isfinite(v) else "nan" for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
