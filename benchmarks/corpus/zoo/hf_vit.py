"""A tiny Vision Transformer learning to tell stripe orientations apart, trained with SGD.

Synthetic 16x16 grayscale images: a sinusoidal grating at one of four orientations (the class),
random frequency and phase, random contrast, plus pixel noise. 4x4 patches, [CLS] token head,
``nn.CrossEntropyLoss`` computed here on the model's logits, SGD with Nesterov momentum and a
step decay of the LR.
"""

import argparse
import json
import math

import torch
import torch.nn as nn
import transformers
from transformers import ViTConfig, ViTForImageClassification

transformers.logging.set_verbosity_error()

IMAGE = 16
PATCH = 4
ANGLES = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)


def gratings(n, generator):
    labels = torch.randint(0, len(ANGLES), (n,), generator=generator)
    theta = torch.tensor(ANGLES)[labels] + 0.15 * torch.randn(n, generator=generator)
    freq = 0.5 + 0.6 * torch.rand(n, generator=generator)
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    contrast = 0.6 + 0.8 * torch.rand(n, generator=generator)
    coords = torch.arange(IMAGE, dtype=torch.float32) - IMAGE / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = torch.cos(theta)[:, None, None] * xx + torch.sin(theta)[:, None, None] * yy
    images = contrast[:, None, None] * torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    images = images + 0.3 * torch.randn(images.shape, generator=generator)
    return images.unsqueeze(1), labels


class Trainer:
    def __init__(self, seed, steps, batch_size=64, lr=0.1, momentum=0.9):
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(2**20 + seed)
        self.steps = steps
        self.batch_size = batch_size
        config = ViTConfig(
            image_size=IMAGE,
            patch_size=PATCH,
            num_channels=1,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=len(ANGLES),
        )
        config._attn_implementation = "eager"
        self.model = ViTForImageClassification(config)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=1e-4
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=max(1, steps // 2), gamma=0.3
        )
        self.history = []

    def train_step(self):
        images, labels = gratings(self.batch_size, self.gen)
        logits = self.model(pixel_values=images).logits
        loss = self.criterion(logits, labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    def fit(self):
        self.model.train()
        for step in range(self.steps):
            self.history.append(self.train_step())
            if step % 50 == 0:
                print(f"step {step:3d}: train loss {self.history[-1]:.4f}")

    @torch.no_grad()
    def evaluate(self, images, labels):
        self.model.eval()
        logits = self.model(pixel_values=images).logits
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return self.criterion(logits, labels).item(), accuracy


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    trainer = Trainer(args.seed, args.steps)
    val_images, val_labels = gratings(512, torch.Generator().manual_seed(99 + args.seed))
    trainer.fit()
    val_loss, val_acc = trainer.evaluate(val_images, val_labels)
    print(f"validation: loss {val_loss:.4f}, accuracy {val_acc:.3f}")

    tail = trainer.history[-max(1, args.steps // 10):]
    numbers = {
        "first_loss": trainer.history[0],
        "train_loss": sum(tail) / len(tail),
        "val_loss": val_loss,
    }
    numbers = {k: (v if math.isfinite(v) else "nan") for k, v in numbers.items()}
    print("CORPUS_RESULT " + json.dumps(numbers))


if __name__ == "__main__":
    main()
