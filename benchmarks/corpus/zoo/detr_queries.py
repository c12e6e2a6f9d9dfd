"""A small DETR-style set predictor finding coloured squares in synthetic images.

Model (the layout of the original DETR, shrunk):
  backbone      three Conv2d-BatchNorm2d-ReLU stages, 32x32 image -> 8x8 feature map
  input_proj    1x1 conv to the transformer width
  pos_embed     fixed 2-D sine positional encoding (half the channels for y, half for x)
  transformer   one post-norm encoder layer over the 64 flattened cells, then two post-norm
                decoder layers: self-attention among the object queries, cross-attention from
                the queries to the encoder memory, feed-forward; a final decoder LayerNorm.
                Positions are added to queries and keys (not values) at every attention, as in
                DETR; all attention is nn.MultiheadAttention(batch_first=True).
  query_embed   6 learned object queries (the decoder input itself starts at zero)
  class_embed   3 colours + "no object"
  bbox_embed    3-layer MLP, sigmoid (cx, cy, w, h) in [0, 1]

Every image holds 1-3 squares of red / green / blue (sizes 6-12 px) over a noisy textured
background. Each step the 6 predictions are matched one-to-one to the targets by minimum cost
(-p(class) + 5 * L1 box distance); with at most 3 targets the optimal assignment is found by
trying all ordered choices of queries. Loss: F.cross_entropy over all queries (unmatched ones
must say "no object", weighted 0.1) + 5 * mean L1 over the matched boxes' coordinates.

Adam with two parameter groups (the backbone at a tenth of the learning rate), gradient
clipping at norm 0.5, a fixed training set visited in shuffled epochs.
"""

import argparse
import itertools
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

IMG = 32
N_CLASSES = 3
NO_OBJECT = N_CLASSES
N_QUERIES = 6
MAX_OBJECTS = 3
COLOURS = torch.tensor([[0.9, 0.15, 0.1], [0.1, 0.85, 0.2], [0.15, 0.2, 0.95]])

D_MODEL = 64
HEADS = 4
FFN = 128
LR = 1e-3
BACKBONE_LR_SCALE = 0.1
EOS_WEIGHT = 0.1
BOX_WEIGHT = 5.0
CLIP = 0.5
BATCH = 32
N_TRAIN = 1024
N_VAL = 256


# ----------------------------------------------------------------------------- data
def render(n, gen):
    """Images (n, 3, IMG, IMG) and per-image targets: list of (labels, boxes cx cy w h)."""
    yy = torch.linspace(0, 1, IMG)[:, None]
    xx = torch.linspace(0, 1, IMG)[None, :]
    images = torch.empty(n, 3, IMG, IMG)
    targets = []
    for i in range(n):
        tint = 0.35 + 0.15 * torch.rand(3, 1, 1, generator=gen)
        angle = float(torch.rand(1, generator=gen)) * math.pi
        stripes = 0.08 * torch.sin(12 * (math.cos(angle) * xx + math.sin(angle) * yy))
        img = tint + stripes + 0.08 * torch.randn(3, IMG, IMG, generator=gen)
        k = int(torch.randint(1, MAX_OBJECTS + 1, (1,), generator=gen))
        labels = torch.randint(0, N_CLASSES, (k,), generator=gen)
        boxes = torch.empty(k, 4)
        for j in range(k):
            size = int(torch.randint(6, 13, (1,), generator=gen))
            x0 = int(torch.randint(0, IMG - size + 1, (1,), generator=gen))
            y0 = int(torch.randint(0, IMG - size + 1, (1,), generator=gen))
            colour = COLOURS[labels[j]] + 0.05 * torch.randn(3, generator=gen)
            img[:, y0 : y0 + size, x0 : x0 + size] = colour[:, None, None]
            boxes[j] = torch.tensor(
                [(x0 + size / 2) / IMG, (y0 + size / 2) / IMG, size / IMG, size / IMG]
            )
        images[i] = img
        targets.append((labels, boxes))
    return images, targets


# ----------------------------------------------------------------------------- model
class PositionEmbeddingSine(nn.Module):
    def __init__(self, d_model, temperature=10000.0):
        super().__init__()
        self.half = d_model // 2
        self.temperature = temperature

    def forward(self, feat):
        _, _, h, w = feat.shape
        y = torch.arange(1, h + 1, dtype=feat.dtype)[:, None].expand(h, w) / h * 2 * math.pi
        x = torch.arange(1, w + 1, dtype=feat.dtype)[None, :].expand(h, w) / w * 2 * math.pi
        dim_t = torch.arange(self.half, dtype=feat.dtype)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.half)
        px, py = x[..., None] / dim_t, y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=-1).flatten(-2)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=-1).flatten(-2)
        return torch.cat((py, px), dim=-1).flatten(0, 1)[None]  # (1, h*w, d)


class EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
        self.linear1 = nn.Linear(D_MODEL, FFN)
        self.linear2 = nn.Linear(FFN, D_MODEL)
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.norm2 = nn.LayerNorm(D_MODEL)

    def forward(self, src, pos):
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, src, need_weights=False)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
        self.linear1 = nn.Linear(D_MODEL, FFN)
        self.linear2 = nn.Linear(FFN, D_MODEL)
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.norm2 = nn.LayerNorm(D_MODEL)
        self.norm3 = nn.LayerNorm(D_MODEL)

    def forward(self, tgt, memory, pos, query_pos):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, k, tgt, need_weights=False)[0])
        attended = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + attended)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class Encoder(nn.Module):
    def __init__(self, n_layers):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer() for _ in range(n_layers))

    def forward(self, src, pos):
        for layer in self.layers:
            src = layer(src, pos)
        return src


class Decoder(nn.Module):
    def __init__(self, n_layers):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer() for _ in range(n_layers))
        self.norm = nn.LayerNorm(D_MODEL)

    def forward(self, tgt, memory, pos, query_pos):
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
        return self.norm(tgt)


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder(1)
        self.decoder = Decoder(2)

    def forward(self, src, pos, query_pos):
        memory = self.encoder(src, pos)
        tgt = torch.zeros_like(query_pos)
        return self.decoder(tgt, memory, pos, query_pos)


class MLP(nn.Module):
    def __init__(self, d_in, d_hidden, d_out, n_layers):
        super().__init__()
        dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def conv_stage(c_in, c_out, stride):
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class DETR(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            *conv_stage(3, 32, 2), *conv_stage(32, 64, 2), *conv_stage(64, 64, 1)
        )
        self.input_proj = nn.Conv2d(64, D_MODEL, 1)
        self.pos_embed = PositionEmbeddingSine(D_MODEL)
        self.transformer = Transformer()
        self.query_embed = nn.Embedding(N_QUERIES, D_MODEL)
        self.class_embed = nn.Linear(D_MODEL, N_CLASSES + 1)
        self.bbox_embed = MLP(D_MODEL, D_MODEL, 4, 3)

    def forward(self, images):
        feat = self.input_proj(self.backbone(images))
        pos = self.pos_embed(feat)
        src = feat.flatten(2).transpose(1, 2)  # (B, h*w, d)
        query_pos = self.query_embed.weight[None].expand(images.shape[0], -1, -1)
        hs = self.transformer(src, pos, query_pos)
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()


# ----------------------------------------------------------------------------- matching + loss
CHOICES = {
    k: torch.tensor(list(itertools.permutations(range(N_QUERIES), k)))
    for k in range(1, MAX_OBJECTS + 1)
}


@torch.no_grad()
def match(logits, boxes, targets):
    """For every image, the query index assigned to each target (min total cost)."""
    probs = logits.softmax(-1)
    assignment = []
    for b, (labels, tboxes) in enumerate(targets):
        cost = -probs[b][:, labels] + BOX_WEIGHT * torch.cdist(boxes[b], tboxes, p=1)  # (Q, k)
        choices = CHOICES[len(labels)]  # (n_choices, k): query per target
        total = cost[choices, torch.arange(len(labels))].sum(-1)
        assignment.append(choices[total.argmin()])
    return assignment


def set_loss(logits, boxes, targets):
    assignment = match(logits, boxes, targets)
    target_classes = torch.full(logits.shape[:2], NO_OBJECT, dtype=torch.long)
    matched_pred, matched_true = [], []
    for b, (labels, tboxes) in enumerate(targets):
        target_classes[b, assignment[b]] = labels
        matched_pred.append(boxes[b, assignment[b]])
        matched_true.append(tboxes)
    weight = torch.ones(N_CLASSES + 1)
    weight[NO_OBJECT] = EOS_WEIGHT
    loss_ce = F.cross_entropy(logits.flatten(0, 1), target_classes.flatten(), weight=weight)
    loss_box = F.l1_loss(torch.cat(matched_pred), torch.cat(matched_true))
    return loss_ce + BOX_WEIGHT * loss_box


def finite(x):
    return x if math.isfinite(x) else "nan"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=160)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(1000 + args.seed)
    train_x, train_t = render(N_TRAIN, gen)
    val_x, val_t = render(N_VAL, gen)

    model = DETR()
    backbone = list(model.backbone.parameters())
    backbone_ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in backbone_ids]
    optimizer = torch.optim.Adam(
        [{"params": rest}, {"params": backbone, "lr": LR * BACKBONE_LR_SCALE}], lr=LR
    )

    losses = []
    order = torch.randperm(N_TRAIN, generator=gen)
    cursor = 0
    model.train()
    for step in range(args.steps):
        if cursor + BATCH > N_TRAIN:
            order, cursor = torch.randperm(N_TRAIN, generator=gen), 0
        idx = order[cursor : cursor + BATCH]
        cursor += BATCH
        logits, boxes = model(train_x[idx])
        loss = set_loss(logits, boxes, [train_t[i] for i in idx.tolist()])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            print(f"[{step:3d}] set loss {losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        logits, boxes = model(val_x)
        val_loss = set_loss(logits, boxes, val_t).item()
    print(f"validation set loss {val_loss:.4f}")

    k = max(1, len(losses) // 10)
    print(
        "CORPUS_RESULT "
        + json.dumps(
            {
                "first_loss": finite(losses[0]),
                "train_loss": finite(sum(losses[-k:]) / k),
                "val_loss": finite(val_loss),
            }
        )
    )


if __name__ == "__main__":
    main()
