"""A Flamingo-style captioner: a decoder-only LM with tanh-gated cross-attention to a resampler.

Synthetic "images" are sets of visual feature vectors: one per object (an object has one of 8
kinds and one of 5 colours; its feature is a fixed random code of the kind plus one of the
colour, plus noise) and two clutter vectors of pure noise, in random order, padded to 5 vectors
with a mask. The caption lists the objects sorted by kind: ``<bos> colour kind [and colour kind
[and colour kind]] <eos>``, so only the visual features tell which words come next.

Model:
- a Perceiver resampler: 4 learned latents attend (``nn.MultiheadAttention`` with a
  ``key_padding_mask`` over the padded visual vectors; the latents are keys too, as in
  Flamingo) and go through a feed-forward layer, giving a fixed number of visual tokens;
- a decoder-only LM (token + learned position embeddings, 2 pre-LN blocks of causal
  self-attention with ``nn.MultiheadAttention`` and a boolean causal ``attn_mask``, GELU MLP);
- before each LM block a gated cross-attention block: hand-written multi-head cross-attention
  from the text to the resampled visual tokens and a feed-forward layer, each added through a
  learnable scalar gate ``tanh(alpha)`` initialised at alpha = 0 (the LM starts text-only and the
  gates have to open for the captions to become predictable).

Loss: causal-LM ``F.cross_entropy`` on the shifted caption with ``ignore_index=-100`` on the
padding. SGD with momentum (weight decay on weight matrices only), a linear warmup then cosine
decay to 10% (``LambdaLR``), ``clip_grad_norm_``.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

N_KINDS, N_COLOURS = 8, 5
PAD, BOS, EOS, AND = 0, 1, 2, 3
COLOUR0 = 4
KIND0 = COLOUR0 + N_COLOURS
VOCAB = KIND0 + N_KINDS
MAX_OBJECTS, CLUTTER = 3, 2
MAX_VISUAL = MAX_OBJECTS + CLUTTER
MAX_TEXT = 3 * MAX_OBJECTS + 1  # caption length without the final <eos>
IGNORE = -100

VIS_DIM, D, HEADS, LATENTS = 16, 48, 4, 4
STEPS, BATCH = 300, 32
PEAK_LR, MOMENTUM, WEIGHT_DECAY, WARMUP, CLIP = 0.1, 0.9, 1e-4, 20, 1.0


class SceneSampler:
    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(77 + seed)
        codes = torch.Generator().manual_seed(12345)  # the "visual world" is fixed
        self.kind_codes = torch.randn(N_KINDS, VIS_DIM, generator=codes)
        self.colour_codes = torch.randn(N_COLOURS, VIS_DIM, generator=codes)

    def sample(self, n):
        g = self.gen
        feats = torch.zeros(n, MAX_VISUAL, VIS_DIM)
        vis_pad = torch.ones(n, MAX_VISUAL, dtype=torch.bool)  # True = padding
        tokens = torch.full((n, MAX_TEXT + 1), PAD, dtype=torch.long)
        for i in range(n):
            k = int(torch.randint(1, MAX_OBJECTS + 1, (1,), generator=g))
            kinds = torch.randperm(N_KINDS, generator=g)[:k].sort().values
            colours = torch.randint(0, N_COLOURS, (k,), generator=g)
            objects = self.kind_codes[kinds] + self.colour_codes[colours]
            clutter = 1.5 * torch.randn(CLUTTER, VIS_DIM, generator=g)
            vectors = torch.cat([objects, clutter]) + 0.6 * torch.randn(k + CLUTTER, VIS_DIM,
                                                                        generator=g)
            order = torch.randperm(k + CLUTTER, generator=g)
            feats[i, : k + CLUTTER] = vectors[order]
            vis_pad[i, : k + CLUTTER] = False
            words = [BOS]
            for j in range(k):
                if j:
                    words.append(AND)
                words += [COLOUR0 + int(colours[j]), KIND0 + int(kinds[j])]
            words.append(EOS)
            tokens[i, : len(words)] = torch.tensor(words)
        inputs = tokens[:, :-1]
        targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == PAD, IGNORE)
        return feats, vis_pad, inputs, targets


class Resampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_proj = nn.Linear(VIS_DIM, D)
        self.latents = nn.Parameter(0.02 * torch.randn(LATENTS, D))
        self.norm_media = nn.LayerNorm(D)
        self.norm_latents = nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * D), nn.GELU(),
                                nn.Linear(2 * D, D))
        self.norm_out = nn.LayerNorm(D)

    def forward(self, feats, vis_pad):
        media = self.norm_media(self.input_proj(feats))
        lat = self.latents.expand(feats.shape[0], -1, -1)
        q = self.norm_latents(lat)
        kv = torch.cat([media, q], dim=1)
        pad = torch.cat([vis_pad, torch.zeros_like(vis_pad[:, :LATENTS])], dim=1)
        lat = lat + self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)[0]
        lat = lat + self.ff(lat)
        return self.norm_out(lat)


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(D, D, bias=False)
        self.to_kv = nn.Linear(D, 2 * D, bias=False)
        self.to_out = nn.Linear(D, D, bias=False)

    def forward(self, x, media):
        b, t, _ = x.shape
        hd = D // HEADS
        q = self.to_q(x).view(b, t, HEADS, hd).transpose(1, 2)
        k, v = self.to_kv(media).view(b, -1, 2, HEADS, hd).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        return self.to_out((att @ v).transpose(1, 2).reshape(b, t, D))


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.xattn = CrossAttention()
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * D), nn.GELU(),
                                nn.Linear(2 * D, D))
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, media):
        x = x + self.attn_gate.tanh() * self.xattn(self.norm(x), media)
        return x + self.ff_gate.tanh() * self.ff(x)


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(D, HEADS, batch_first=True)

    def forward(self, x):
        t = x.shape[1]
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        return self.mha(x, x, x, attn_mask=future, need_weights=False)[0]


class LMBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D)
        self.attn = CausalSelfAttention()
        self.ln2 = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class FlamingoCaptioner(nn.Module):
    def __init__(self, n_layers=2):
        super().__init__()
        self.resampler = Resampler()
        self.tok_emb = nn.Embedding(VOCAB, D)
        self.pos_emb = nn.Embedding(MAX_TEXT, D)
        self.xattn_blocks = nn.ModuleList(GatedCrossAttentionBlock() for _ in range(n_layers))
        self.lm_blocks = nn.ModuleList(LMBlock() for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, VOCAB)

    def forward(self, feats, vis_pad, tokens):
        media = self.resampler(feats, vis_pad)
        x = self.tok_emb(tokens) + self.pos_emb.weight[: tokens.shape[1]]
        for gated, block in zip(self.xattn_blocks, self.lm_blocks, strict=True):
            x = block(gated(x, media))
        return self.lm_head(self.ln_f(x))


def lm_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=IGNORE)


def param_groups(model):
    matrices = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    others = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    return [{"params": matrices, "weight_decay": WEIGHT_DECAY},
            {"params": others, "weight_decay": 0.0}]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=STEPS)
    cli = ap.parse_args()

    torch.manual_seed(cli.seed)
    scenes = SceneSampler(cli.seed)
    val_batch = scenes.sample(256)

    model = FlamingoCaptioner()
    opt = torch.optim.SGD(param_groups(model), lr=PEAK_LR, momentum=MOMENTUM)

    def lr_factor(step):
        if step < WARMUP:
            return (step + 1) / WARMUP
        progress = (step - WARMUP) / max(1, cli.steps - WARMUP)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    history = []
    for step in range(cli.steps):
        model.train()
        feats, vis_pad, inputs, targets = scenes.sample(BATCH)
        loss = lm_loss(model(feats, vis_pad, inputs), targets)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        sched.step()
        history.append(loss.item())
        if step % 50 == 0 or step == cli.steps - 1:
            gates = " ".join(f"{b.attn_gate.item():+.3f}" for b in model.xattn_blocks)
            print(f"step {step:3d} loss {history[-1]:.4f} gates {gates}")

    model.eval()
    with torch.no_grad():
        val_loss = lm_loss(model(*val_batch[:3]), val_batch[3]).item()
    print(f"val loss {val_loss:.4f}")

    n_tail = max(1, len(history) // 10)
    result = {"first_loss": history[0], "train_loss": sum(history[-n_tail:]) / n_tail,
              "val_loss": val_loss}
    print("CORPUS_RESULT " + json.dumps(
        {k: v if math.isfinite(v) else "nan" for k, v in result.items()}))


if __name__ == "__main__":
    main()
