"""video_healthy.py with one bug: the cross-attention's learnable temperature is initialised as
torch.tensor(1 / 0.07) instead of its log, and forward() still exponentiates it: the logit scale is
e^14.3 = 1.6e6 instead of 14.3. The fusion softmax is one-hot from the first step, its gradient is
exactly zero, and cross_attn.q_proj, cross_attn.k_proj and cross_attn.logit_scale never learn where
to look.

Run: python sample_programs/video_temperature_fault.py [--steps 400] [--seed 0]
"""

import argparse
import json
import math

import torch
from torch import nn
from torch.nn import functional as F

FRAMES, SIZE, MARGIN, CLASSES = 8, 26, 3, 4
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))


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
        attn = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(dim=-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class CrossAttention(nn.Module):
    """Queries from one stream, keys and values from the other. Cosine-similarity logits with a
    learnable temperature, kept in log space as in CLIP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07))
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, -1, self.heads, self.head_dim).transpose(1, 2)

        q = F.normalize(split(self.q_proj(x)), dim=-1)
        k = F.normalize(split(self.k_proj(context)), dim=-1)
        v = split(self.v_proj(context))
        attn = (q @ k.transpose(-2, -1) * self.logit_scale.exp()).softmax(dim=-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class VideoAttentionNet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv3d(16, dim, kernel_size=3, stride=(1, 2, 2), padding=1),
            nn.ReLU(),
        )
        positions = (SIZE // 2) ** 2
        self.spatial_pos = nn.Parameter(torch.randn(1, positions, dim) * 0.02)
        self.temporal_pos = nn.Parameter(torch.randn(1, FRAMES, dim) * 0.02)
        self.spatial_norm = nn.LayerNorm(dim)
        self.spatial_attn = SelfAttention(dim, heads)
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal_attn = SelfAttention(dim, heads)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        features = self.stem(clips)
        spatial = features.mean(dim=2).flatten(2).transpose(1, 2) + self.spatial_pos
        temporal = features.mean(dim=(3, 4)).transpose(1, 2) + self.temporal_pos
        spatial = spatial + self.spatial_attn(self.spatial_norm(spatial))
        temporal = temporal + self.temporal_attn(self.temporal_norm(temporal))
        memory = self.cross_norm(spatial)
        fused = temporal + self.cross_attn(self.cross_norm(temporal), memory)
        return self.classifier(self.norm(fused.mean(dim=1)))


def draw(clip: torch.Tensor, left: int, direction: tuple[int, int], gen: torch.Generator) -> None:
    """A 2x2 square moving one pixel per frame inside a MARGIN-padded half of the frame."""
    width = SIZE // 2 - MARGIN

    def start(extent: int, step: int) -> int:
        travel = (FRAMES - 1) * abs(step)
        first = int(torch.randint(0, extent - 2 - travel + 1, (1,), generator=gen))
        return first + travel if step < 0 else first

    dy, dx = direction
    y, x = MARGIN + start(SIZE - 2 * MARGIN, dy), left + start(width, dx)
    for t in range(FRAMES):
        clip[t, y + dy * t: y + dy * t + 2, x + dx * t: x + dx * t + 2] = 1.0


def make_dataset(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    clips = torch.rand(n, FRAMES, SIZE, SIZE, generator=gen) * 0.3
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    for i in range(n):
        other = int(torch.randint(0, len(DIRECTIONS), (1,), generator=gen))
        draw(clips[i], MARGIN, DIRECTIONS[labels[i]], gen)
        draw(clips[i], SIZE // 2, DIRECTIONS[other], gen)
    return clips.unsqueeze(1), labels


@torch.no_grad()
def accuracy(model: nn.Module, clips: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = sum((model(c).argmax(-1) == y).sum().item()
                  for c, y in zip(clips.split(256), labels.split(256), strict=True))
    model.train()
    return correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--checkpoint", default=None, help="save losses and weights here")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_x, train_y = make_dataset(gen, 2048)
    eval_x, eval_y = make_dataset(gen, 512)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train_x, train_y), batch_size=args.batch_size,
        shuffle=True, drop_last=True,
    )

    model = VideoAttentionNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    losses: list[float] = []
    step = 0
    while step < args.steps:
        for clips, labels in loader:
            step += 1
            logits = model(clips)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step % 50 == 0 or step == 1:
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
