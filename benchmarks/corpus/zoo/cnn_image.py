"""Small ConvNet (Conv-BN-ReLU x4, max pooling) on synthetic stroke images.

Images are 1x16x16 noise with one short stroke drawn at a random place; the class is the
stroke's orientation: horizontal, vertical, diagonal or anti-diagonal.
"""

import argparse
import json
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

HPARAMS = {
    "image_size": 16,
    "stroke_len": 5,
    "noise_std": 0.6,
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "milestones": (0.5, 0.8),   # fractions of the run where the LR drops 10x
    "val_size": 512,
}
ORIENTATIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


def draw_strokes(n, gen, size, length, noise_std):
    images = noise_std * torch.randn(n, 1, size, size, generator=gen)
    labels = torch.randint(0, len(ORIENTATIONS), (n,), generator=gen)
    rows = torch.randint(length, size - length, (n,), generator=gen)
    cols = torch.randint(length, size - length, (n,), generator=gen)
    steps = torch.arange(length) - length // 2
    dr = torch.tensor([o[0] for o in ORIENTATIONS])[labels]
    dc = torch.tensor([o[1] for o in ORIENTATIONS])[labels]
    r = rows[:, None] + dr[:, None] * steps[None, :]
    c = cols[:, None] + dc[:, None] * steps[None, :]
    idx = torch.arange(n)[:, None].expand_as(r)
    images[idx, 0, r, c] += 1.5
    return images, labels


def conv_bn(cin, cout, tag):
    return [
        (f"conv{tag}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
        (f"bn{tag}", nn.BatchNorm2d(cout)),
        (f"relu{tag}", nn.ReLU(inplace=True)),
    ]


class SmallConvNet(nn.Module):
    def __init__(self, num_classes=4, width=16):
        super().__init__()
        layers = []
        layers += conv_bn(1, width, 1)
        layers += conv_bn(width, width, 2)
        layers.append(("pool1", nn.MaxPool2d(2)))
        layers += conv_bn(width, 2 * width, 3)
        layers.append(("pool2", nn.MaxPool2d(2)))
        layers += conv_bn(2 * width, 2 * width, 4)
        self.features = nn.Sequential(OrderedDict(layers))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.gap(self.features(x)).flatten(1)
        return self.classifier(x)


class Experiment:
    def __init__(self, seed, steps, hp):
        self.hp = hp
        self.steps = steps
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(12345 + seed)
        self.model = SmallConvNet()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=hp["lr"], momentum=hp["momentum"],
            weight_decay=hp["weight_decay"], nesterov=True,
        )
        marks = [max(1, int(f * steps)) for f in hp["milestones"]]
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=marks, gamma=0.1
        )
        self.val_set = self.batch(hp["val_size"])
        self.history = []

    def batch(self, n):
        hp = self.hp
        return draw_strokes(n, self.gen, hp["image_size"], hp["stroke_len"], hp["noise_std"])

    def train_step(self):
        self.model.train()
        images, labels = self.batch(self.hp["batch_size"])
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model(images), labels)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    @torch.no_grad()
    def validate(self):
        self.model.eval()
        images, labels = self.val_set
        logits = self.model(images)
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return F.cross_entropy(logits, labels).item(), accuracy

    def fit(self):
        for step in range(self.steps):
            self.history.append(self.train_step())
            if step % 25 == 0:
                print(f"step {step:3d} | loss {self.history[-1]:.4f}")
        return self.validate()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    exp = Experiment(args.seed, args.steps, HPARAMS)
    val_loss, val_acc = exp.fit()
    print(f"val | loss {val_loss:.4f} | acc {val_acc:.3f}")
    n = max(1, len(exp.history) // 10)
    summary = {
        "first_loss": exp.history[0],
        "train_loss": sum(exp.history[-n:]) / n,
        "val_loss": val_loss,
    }
    for key, value in summary.items():
        if not math.isfinite(value):
            summary[key] = "nan"
    print(f"CORPUS_RESULT {json.dumps(summary)}")


if __name__ == "__main__":
    main()
