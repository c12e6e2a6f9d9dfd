"""Contrastive pretraining of a tiny transformers CLIP model on synthetic (image, caption) pairs.

``CLIPModel`` from a tiny ``CLIPConfig`` (random init, no download, no tokenizer): a 2-layer
ViT image tower over 4x4 patches of 16x16 RGB images and a 2-layer causal text tower pooled at
its end-of-text token, both projected to a shared 32-dim space, with the model's own learnable
``logit_scale`` (eager attention, so the softmax is visible).

Data: each image holds one coloured shape (5 colours x 4 shapes) in one of the 4 quadrants,
jittered, over a noisy tinted background. Its caption names colour, shape and quadrant in one of
several word orders with optional filler words, so captions have different lengths; they are
padded at the right and come with an ``attention_mask``. A batch holds distinct (colour, shape,
quadrant) combinations, so the in-batch negatives are true negatives.

Loss: the symmetric InfoNCE loss computed here from ``logits_per_image`` with
``F.cross_entropy`` (images -> captions and captions -> images). AdamW with weight decay on
weight matrices only (not biases, LayerNorm weights, embeddings of positions or
``logit_scale``), a linear warmup then cosine decay to 15% of the peak (``LambdaLR``).
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

# ---------------------------------------------------------------- vocabulary
PAD, BOS, EOS = 0, 1, 3
WORD = {"a": 2, "photo": 4, "of": 5, "the": 6, "small": 7, "in": 8, "corner": 9, "shows": 10}
COLOUR_BASE, N_COLOURS = 11, 5
SHAPE_BASE, N_SHAPES = 16, 4
TOP, BOTTOM, LEFT, RIGHT = 20, 21, 22, 23
VOCAB = 24
N_QUADRANTS = 4
N_COMBOS = N_COLOURS * N_SHAPES * N_QUADRANTS

PALETTE = torch.tensor([
    [0.9, 0.1, 0.1],  # red
    [0.1, 0.8, 0.2],  # green
    [0.15, 0.25, 0.95],  # blue
    [0.9, 0.85, 0.1],  # yellow
    [0.85, 0.2, 0.85],  # magenta
])

IMAGE = 16
BATCH = 32
STEPS = 300
PEAK_LR = 3e-3
WARMUP = 12
WEIGHT_DECAY = 0.05
VAL_BATCHES = 4


def shape_stencil(kind):
    """A 6x6 binary stencil: filled square, plus, hollow ring, diagonal bar."""
    s = torch.zeros(6, 6)
    if kind == 0:
        s[1:5, 1:5] = 1
    elif kind == 1:
        s[2:4, :] = 1
        s[:, 2:4] = 1
    elif kind == 2:
        s[:, :] = 1
        s[2:4, 2:4] = 0
    else:
        idx = torch.arange(6)
        s[idx, idx] = 1
        s[idx[1:], idx[:-1]] = 1
    return s


STENCILS = torch.stack([shape_stencil(k) for k in range(N_SHAPES)])


def draw(colour, shape, quadrant, gen):
    img = 0.15 * torch.rand(3, 1, 1, generator=gen) + 0.1 * torch.randn(3, IMAGE, IMAGE,
                                                                         generator=gen)
    top = 8 * (quadrant // 2) + int(torch.randint(0, 3, (1,), generator=gen))
    left = 8 * (quadrant % 2) + int(torch.randint(0, 3, (1,), generator=gen))
    stencil = STENCILS[shape]
    patch = img[:, top:top + 6, left:left + 6]
    img[:, top:top + 6, left:left + 6] = torch.where(
        stencil.bool(), PALETTE[colour][:, None, None].expand(3, 6, 6), patch)
    return img


def caption(colour, shape, quadrant, gen):
    """Token ids (without padding) naming the colour, the shape and the quadrant."""
    vert = TOP if quadrant // 2 == 0 else BOTTOM
    horiz = LEFT if quadrant % 2 == 0 else RIGHT
    obj = [COLOUR_BASE + colour, SHAPE_BASE + shape]
    if torch.rand(1, generator=gen).item() < 0.4:
        obj = [WORD["small"], *obj]
    where = [WORD["in"], WORD["the"], vert, horiz]
    if torch.rand(1, generator=gen).item() < 0.4:
        where = [*where, WORD["corner"]]
    template = int(torch.randint(0, 3, (1,), generator=gen))
    if template == 0:
        words = [WORD["a"], *obj, *where]
    elif template == 1:
        words = [WORD["a"], WORD["photo"], WORD["of"], WORD["a"], *obj, *where]
    else:
        words = [vert, horiz, WORD["shows"], WORD["a"], *obj]
    return [BOS, *words, EOS]


def sample_pairs(n, gen):
    """``n`` pairs with distinct (colour, shape, quadrant) combinations."""
    combos = torch.randperm(N_COMBOS, generator=gen)[:n]
    images, texts = [], []
    for c in combos.tolist():
        colour, rest = divmod(c, N_SHAPES * N_QUADRANTS)
        shape, quadrant = divmod(rest, N_QUADRANTS)
        images.append(draw(colour, shape, quadrant, gen))
        texts.append(caption(colour, shape, quadrant, gen))
    width = max(len(t) for t in texts)
    input_ids = torch.full((n, width), PAD, dtype=torch.long)
    attention_mask = torch.zeros(n, width, dtype=torch.long)
    for i, t in enumerate(texts):
        input_ids[i, : len(t)] = torch.tensor(t)
        attention_mask[i, : len(t)] = 1
    return torch.stack(images), input_ids, attention_mask


def build_model():
    text = {
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16,
        "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS,
        "hidden_act": "quick_gelu", "attention_dropout": 0.0,
    }
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": IMAGE, "patch_size": 4, "num_channels": 3,
        "hidden_act": "quick_gelu", "attention_dropout": 0.0,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    return CLIPModel(config)


def no_decay(name, param):
    return (param.ndim < 2 or "norm" in name or "layrnorm" in name or name == "logit_scale"
            or "position_embedding" in name)


def optimizer_groups(model):
    decay = [p for n, p in model.named_parameters() if not no_decay(n, p)]
    rest = [p for n, p in model.named_parameters() if no_decay(n, p)]
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]


def clip_loss(logits_per_image):
    targets = torch.arange(logits_per_image.shape[0])
    return 0.5 * (F.cross_entropy(logits_per_image, targets)
                  + F.cross_entropy(logits_per_image.t(), targets))


def cosine_with_warmup(total):
    def factor(step):
        if step < WARMUP:
            return (step + 1) / WARMUP
        progress = (step - WARMUP) / max(1, total - WARMUP)
        return 0.15 + 0.85 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def nan_safe(x):
    return x if math.isfinite(x) else "nan"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(4242 + args.seed)
    val_set = [sample_pairs(BATCH, gen) for _ in range(VAL_BATCHES)]

    model = build_model()
    optimizer = torch.optim.AdamW(optimizer_groups(model), lr=PEAK_LR, betas=(0.9, 0.98),
                                  eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(args.steps))

    losses = []
    model.train()
    for step in range(args.steps):
        pixels, ids, mask = sample_pairs(BATCH, gen)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        loss = clip_loss(out.logits_per_image)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 30 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  "
                  f"scale {model.logit_scale.exp().item():.2f}")

    model.eval()
    val_losses, hits = [], 0
    with torch.no_grad():
        for pixels, ids, mask in val_set:
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
            logits = logits.logits_per_image
            val_losses.append(clip_loss(logits).item())
            hits += int((logits.argmax(dim=1) == torch.arange(BATCH)).sum())
    val_loss = sum(val_losses) / len(val_losses)
    print(f"val loss {val_loss:.4f}  image->text top-1 {hits / (BATCH * VAL_BATCHES):.3f}")

    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": nan_safe(losses[0]),
        "train_loss": nan_safe(sum(losses[-tail:]) / tail),
        "val_loss": nan_safe(val_loss),
    }))


if __name__ == "__main__":
    main()
