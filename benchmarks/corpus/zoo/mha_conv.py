"""Conv1d stem + nn.MultiheadAttention + attention pooling, for multichannel signal classification.

Every sample is a noisy 3-channel signal of 48 steps. Somewhere in it one of four short
class-specific waveforms ("motifs") is hidden, and a decoy motif of another family (not a
class) is hidden elsewhere. The network has to find the motif and name its class.
"""

import argparse
import json
import math

import torch
from torch import nn

CHANNELS = 3
LENGTH = 48
MOTIF_LEN = 7
NUM_CLASSES = 4
HIDDEN = 48
HEADS = 4
BATCH = 48
LR = 0.05
MOMENTUM = 0.9
NOISE = 0.8


def motif_bank():
    g = torch.Generator().manual_seed(20240)  # the task itself is the same for every seed
    bank = torch.randn(NUM_CLASSES + 2, CHANNELS, MOTIF_LEN, generator=g)
    return bank / bank.flatten(1).norm(dim=1)[:, None, None] * 4.0


MOTIFS = motif_bank()


def synth(n, g):
    x = NOISE * torch.randn(n, CHANNELS, LENGTH, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    decoy = torch.randint(NUM_CLASSES, NUM_CLASSES + 2, (n,), generator=g)
    half = LENGTH // 2 - MOTIF_LEN
    start_a = torch.randint(0, half, (n,), generator=g)
    start_b = torch.randint(0, half, (n,), generator=g) + LENGTH // 2
    swap = torch.rand(n, generator=g) < 0.5
    where_motif = torch.where(swap, start_b, start_a)
    where_decoy = torch.where(swap, start_a, start_b)
    for i in range(n):
        a, b = int(where_motif[i]), int(where_decoy[i])
        x[i, :, a:a + MOTIF_LEN] += MOTIFS[y[i]]
        x[i, :, b:b + MOTIF_LEN] += MOTIFS[decoy[i]]
    return x, y


class AttnPool(nn.Module):
    """Learned-query attention pooling over time."""

    def __init__(self, dim):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, h):                      # h: (B, T, D)
        w = torch.softmax(self.score(h).squeeze(-1), dim=-1)
        return torch.einsum("bt,btd->bd", w, h)


class ConvAttnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(CHANNELS, HIDDEN, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(HIDDEN, HIDDEN, kernel_size=5, padding=2),
            nn.ReLU(),
        )
        self.pos = nn.Parameter(torch.zeros(1, LENGTH, HIDDEN))
        self.mha = nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True)
        self.norm = nn.LayerNorm(HIDDEN)
        self.pool = AttnPool(HIDDEN)
        self.head = nn.Sequential(
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, NUM_CLASSES)
        )

    def forward(self, x):                      # x: (B, C, T)
        h = self.stem(x).transpose(1, 2) + self.pos
        a, _ = self.mha(h, h, h, need_weights=False)
        h = self.norm(h + a)
        return self.head(self.pool(h))


def evaluate(net, x, y, loss_fn):
    net.eval()
    with torch.no_grad():
        logits = net(x)
        loss = loss_fn(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    net.train()
    return loss, acc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    opts = ap.parse_args()

    torch.manual_seed(opts.seed)
    g = torch.Generator().manual_seed(opts.seed + 7)
    val_x, val_y = synth(512, g)

    net = ConvAttnNet()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, opts.steps // 3), gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()

    trace = []
    for step in range(1, opts.steps + 1):
        x, y = synth(BATCH, g)
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        trace.append(float(loss))
        if step % 50 == 0:
            print(f"[{step}/{opts.steps}] loss={trace[-1]:.3f}")

    val_loss, val_acc = evaluate(net, val_x, val_y, loss_fn)
    print(f"validation: loss={val_loss:.3f} acc={val_acc:.3f}")
    last = trace[-max(1, len(trace) // 10):]
    out = {"first_loss": trace[0], "train_loss": sum(last) / len(last), "val_loss": val_loss}
    out = {k: (v if math.isfinite(v) else "nan") for k, v in out.items()}
    print("CORPUS_RESULT", json.dumps(out))


if __name__ == "__main__":
    main()
