"""Semantic segmentation of synthetic shape scenes with a tiny transformers SegFormer.

``SegformerForSemanticSegmentation`` from a small ``SegformerConfig`` (random init, no download):
three stages of overlapping strided-conv patch embeddings (32x32 -> 16x16 -> 8x8 -> 4x4), one
efficient self-attention block per stage whose keys and values are downsampled by a strided conv
(reduction ratios 4, 2, 1), a Mix-FFN with its 3x3 depthwise conv, and the all-MLP decode head
(per-stage projections, upsampling, 1x1 fuse conv + BatchNorm, 1x1 classifier).

Data: 32x32 RGB scenes over a textured background (a colour gradient, oblique stripes of random
frequency and phase, pixel noise). Two to four filled shapes of radius 4-8 are painted in random
colours (colour says nothing about the class): squares, discs and diamonds, so a pixel's class
(background, square, disc, diamond) depends on the outline of the shape around it, which inside
a large shape lies several pixels away. Labels are a per-pixel class map; a one
pixel band along the image border is set to ``IGNORE`` (the patch convs pad there).

Loss: the decoder's 1/2-resolution logits are upsampled bilinearly to 32x32 and scored with
``F.cross_entropy(..., ignore_index=IGNORE)`` in the script. AdamW (no decay on biases and norm
weights), a linear warmup then polynomial decay (power 0.9) to 10% of the peak via ``LambdaLR``.
Validation reports the loss, pixel accuracy and mean IoU.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from transformers import SegformerConfig, SegformerForSemanticSegmentation

SIZE = 32
NUM_CLASSES = 4  # 0 background, 1 square, 2 disc, 3 diamond
IGNORE = 255
BATCH = 16
STEPS = 200
LR = 3e-3
WARMUP = 10
POWER = 0.9
END_FACTOR = 0.1
VAL_IMAGES = 96


# ------------------------------------------------------------------ synthetic scenes
def render(n, gen):
    """``n`` images (n, 3, 32, 32) and their label maps (n, 32, 32)."""
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(),
                            indexing="ij")
    # background: gradient between two random colours + stripes + noise
    c0 = torch.rand(n, 3, 1, 1, generator=gen)
    c1 = torch.rand(n, 3, 1, 1, generator=gen)
    angle = torch.rand(n, 1, 1, generator=gen) * math.pi
    ramp = (torch.cos(angle) * xx + torch.sin(angle) * yy) / SIZE
    ramp = (ramp - ramp.amin(dim=(1, 2), keepdim=True)).unsqueeze(1)
    image = c0 + (c1 - c0) * ramp.clamp(0, 1)
    freq = 0.4 + 0.8 * torch.rand(n, 1, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=gen)
    stripes = torch.sin(freq * (xx + 0.6 * yy) + phase).unsqueeze(1)
    image = image + 0.12 * stripes + 0.05 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    labels = torch.zeros(n, SIZE, SIZE, dtype=torch.long)

    count = torch.randint(2, 5, (n,), generator=gen)
    for k in range(4):
        present = (count > k).view(n, 1, 1)
        kind = torch.randint(1, NUM_CLASSES, (n, 1, 1), generator=gen)
        radius = torch.randint(4, 9, (n, 1, 1), generator=gen).float()
        cy = torch.randint(4, SIZE - 4, (n, 1, 1), generator=gen).float()
        cx = torch.randint(4, SIZE - 4, (n, 1, 1), generator=gen).float()
        dy, dx = (yy - cy).abs(), (xx - cx).abs()
        square = torch.maximum(dy, dx) <= radius - 0.5
        disc = dy**2 + dx**2 <= radius**2
        diamond = dy + dx <= radius + 0.5
        shape = torch.where(kind == 1, square, torch.where(kind == 2, disc, diamond)) & present
        colour = torch.rand(n, 3, 1, 1, generator=gen)
        image = torch.where(shape.unsqueeze(1), colour, image)
        labels = torch.where(shape, kind.expand_as(labels), labels)

    labels[:, 0, :] = IGNORE
    labels[:, -1, :] = IGNORE
    labels[:, :, 0] = IGNORE
    labels[:, :, -1] = IGNORE
    image = (image - 0.5) / 0.3
    return image, labels


# ------------------------------------------------------------------ model
def make_model():
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=3,
        depths=[1, 1, 1],
        sr_ratios=[4, 2, 1],
        hidden_sizes=[32, 48, 64],
        patch_sizes=[5, 3, 3],
        strides=[2, 2, 2],
        num_attention_heads=[1, 2, 2],
        mlp_ratios=[2, 2, 2],
        decoder_hidden_size=48,
        num_labels=NUM_CLASSES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        drop_path_rate=0.0,
        semantic_loss_ignore_index=IGNORE,
        initializer_range=0.1,  # wider than the 0.02 default: trains in a few hundred steps
    )
    return SegformerForSemanticSegmentation(config)


def param_groups(model, weight_decay=0.01):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def poly_schedule(total_steps):
    def factor(step):
        if step < WARMUP:
            return (step + 1) / WARMUP
        left = 1.0 - (step - WARMUP) / max(1, total_steps - WARMUP)
        return END_FACTOR + (1.0 - END_FACTOR) * max(0.0, left) ** POWER
    return factor


def segmentation_loss(logits, labels):
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE), logits


def confusion(pred, labels):
    valid = labels != IGNORE
    idx = labels[valid] * NUM_CLASSES + pred[valid]
    return torch.bincount(idx, minlength=NUM_CLASSES**2).view(NUM_CLASSES, NUM_CLASSES)


def finite_or_nan(x):
    return x if math.isfinite(x) else "nan"


def main():
    ap = argparse.ArgumentParser(description="tiny SegFormer on synthetic shape scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=STEPS)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(1000 + args.seed)
    val_images, val_labels = render(VAL_IMAGES, gen)

    model = make_model()
    optimizer = torch.optim.AdamW(param_groups(model), lr=LR, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(args.steps))

    history = []
    model.train()
    for step in range(args.steps):
        images, labels = render(BATCH, gen)
        logits = model(pixel_values=images).logits
        loss, _ = segmentation_loss(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:3d} loss {history[-1]:.4f} lr {scheduler.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        total, counts = 0.0, torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
        for start in range(0, VAL_IMAGES, 32):
            images = val_images[start:start + 32]
            labels = val_labels[start:start + 32]
            loss, up = segmentation_loss(model(pixel_values=images).logits, labels)
            total += loss.item() * len(images)
            counts += confusion(up.argmax(dim=1), labels)
        val_loss = total / VAL_IMAGES
    hits = counts.diag().float()
    iou = hits / (counts.sum(0) + counts.sum(1) - counts.diag()).clamp(min=1).float()
    print(f"val loss {val_loss:.4f} pixel acc {(hits.sum() / counts.sum()).item():.3f} "
          f"mIoU {iou.mean().item():.3f}")

    tail = max(1, len(history) // 10)
    result = {
        "first_loss": finite_or_nan(history[0]),
        "train_loss": finite_or_nan(sum(history[-tail:]) / tail),
        "val_loss": finite_or_nan(val_loss),
    }
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
