"""Axial-attention network that learns one step of a cyclic cellular automaton.

The grid task: every cell of an 8x8 board holds one of ``n_states`` colours. One step of the
cyclic cellular automaton advances a cell to the next colour ``(s + 1) % n_states`` when at least
one of its four neighbours (up, down, left, right; no wrap-around) already has that colour, and
leaves it unchanged otherwise. The model sees the board and predicts, for every cell, whether it
advances (per-cell two-class cross-entropy): that needs the cell's own colour compared with its
neighbours along *both* axes; a board's own colours alone say nothing (about 2/3 of the cells
advance whatever their colour).

Model (Ho et al., "Axial Attention in Multidimensional Transformers", simplified): colour
embedding plus separate row/column position embeddings; each block runs pre-norm self-attention
along the rows (every cell attends to the cells of its row), then along the columns, then an MLP,
each with a residual. The attention is written by hand (scores, a learned relative-position bias
per head and offset along that axis, ``softmax``, weighted sum). A linear classifier per cell.

Optimizer: RMSprop with a StepLR schedule (halved every third of the run).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Config:
    size: int = 8
    n_states: int = 4
    dim: int = 32
    heads: int = 4
    depth: int = 2
    batch: int = 16
    lr: float = 2e-3
    n_val: int = 128


CFG = Config()


# ----------------------------------------------------------------------------- data
def random_boards(n: int, gen: torch.Generator) -> torch.Tensor:
    """Uniformly random colourings (about two thirds of the cells advance)."""
    return torch.randint(0, CFG.n_states, (n, CFG.size, CFG.size), generator=gen)


def advances(board: torch.Tensor) -> torch.Tensor:
    succ = (board + 1) % CFG.n_states
    padded = F.pad(board, (1, 1, 1, 1), value=-1)  # -1: outside the board, matches nothing
    neighbours = (padded[:, :-2, 1:-1], padded[:, 2:, 1:-1],
                  padded[:, 1:-1, :-2], padded[:, 1:-1, 2:])
    advance = torch.zeros_like(board, dtype=torch.bool)
    for nb in neighbours:
        advance |= nb == succ
    return advance.long()  # 1: the cell advances to its successor colour, 0: it stays


# ----------------------------------------------------------------------------- model
class AxialSelfAttention(nn.Module):
    """Multi-head self-attention along one axis of a (B, H, W, D) grid."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        assert axis in (1, 2)
        self.axis = axis
        self.heads = CFG.heads
        self.head_dim = CFG.dim // CFG.heads
        self.to_qkv = nn.Linear(CFG.dim, 3 * CFG.dim, bias=False)
        self.proj = nn.Linear(CFG.dim, CFG.dim)
        n = CFG.size
        self.rel_bias = nn.Parameter(torch.zeros(self.heads, 2 * n - 1))
        idx = torch.arange(n)
        self.register_buffer("rel_index", idx[None, :] - idx[:, None] + n - 1, persistent=False)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        if self.axis == 1:  # attend along the columns: put the row axis last but one
            grid = grid.transpose(1, 2)
        b, lines, length, d = grid.shape
        # fold the other axis into the batch: every line is an independent sequence
        qkv = self.to_qkv(grid.reshape(b * lines, length, d))
        qkv = qkv.view(b * lines, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B*lines, heads, length, hd)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        logits = logits + self.rel_bias[:, self.rel_index]  # (heads, length, length)
        weights = F.softmax(logits, dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(b, lines, length, d)
        out = self.proj(mixed)
        if self.axis == 1:
            out = out.transpose(1, 2)
        return out


class AxialBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.row_norm = nn.LayerNorm(CFG.dim)
        self.row_attn = AxialSelfAttention(axis=2)
        self.col_norm = nn.LayerNorm(CFG.dim)
        self.col_attn = AxialSelfAttention(axis=1)
        self.mlp_norm = nn.LayerNorm(CFG.dim)
        self.mlp = nn.Sequential(
            nn.Linear(CFG.dim, 2 * CFG.dim), nn.GELU(), nn.Linear(2 * CFG.dim, CFG.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.row_attn(self.row_norm(x))
        x = x + self.col_attn(self.col_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class AxialNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell_embed = nn.Embedding(CFG.n_states, CFG.dim)
        self.row_embed = nn.Parameter(0.02 * torch.randn(CFG.size, 1, CFG.dim))
        self.col_embed = nn.Parameter(0.02 * torch.randn(1, CFG.size, CFG.dim))
        self.blocks = nn.ModuleList(AxialBlock() for _ in range(CFG.depth))
        self.out_norm = nn.LayerNorm(CFG.dim)
        self.classifier = nn.Linear(CFG.dim, 2)
        nn.init.zeros_(self.classifier.weight)  # start from uniform per-cell predictions
        nn.init.zeros_(self.classifier.bias)

    def forward(self, boards: torch.Tensor) -> torch.Tensor:
        x = self.cell_embed(boards) + self.row_embed + self.col_embed
        for blk in self.blocks:
            x = blk(x)
        return self.classifier(self.out_norm(x))  # (B, H, W, 2)


def cell_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, 2), target.reshape(-1))


def jsonable(v: float) -> float | str:
    return v if math.isfinite(v) else "nan"


def main() -> None:
    cli = argparse.ArgumentParser()
    cli.add_argument("--seed", type=int, default=0)
    cli.add_argument("--steps", type=int, default=150)
    ns = cli.parse_args()

    torch.manual_seed(ns.seed)
    rng = torch.Generator().manual_seed(90210 + ns.seed)
    val_boards = random_boards(CFG.n_val, rng)
    val_next = advances(val_boards)

    net = AxialNet()
    opt = torch.optim.RMSprop(net.parameters(), lr=CFG.lr, alpha=0.99, eps=1e-8)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, ns.steps // 3), gamma=0.5)

    trace: list[float] = []
    net.train()
    for it in range(ns.steps):
        boards = random_boards(CFG.batch, rng)
        loss = cell_loss(net(boards), advances(boards))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        trace.append(loss.item())
        if it % 25 == 0:
            print(f"it {it:4d} loss {trace[-1]:.4f} lr {sched.get_last_lr()[0]:.2e}")

    net.eval()
    with torch.no_grad():
        val_logits = net(val_boards)
        val_loss = float(cell_loss(val_logits, val_next))
        acc = float((val_logits.argmax(-1) == val_next).float().mean())
    print(f"val loss {val_loss:.4f} cell accuracy {acc:.3f}")
    k = max(1, len(trace) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": jsonable(trace[0]),
        "train_loss": jsonable(sum(trace[-k:]) / k),
        "val_loss": jsonable(val_loss),
    }))


if __name__ == "__main__":
    main()
