"""A small Transformer-XL language model trained segment by segment with recurrent memory.

Long token streams are cut into segments of ``SEG_LEN`` tokens that are fed one after another;
every layer keeps the hidden states it received for the last ``MEM_LEN`` positions as *memory*
(``.detach()``ed: no gradient flows into the previous segment, as in Dai et al. 2019), and the
next segment's queries attend over ``[memory; segment]``. The causal mask is the rectangular
Transformer-XL one (a query at segment position i sees all memory slots and segment positions
<= i), applied with ``masked_fill(-inf)`` before ``softmax``. Positions are encoded by a learned
relative-position bias per head and distance (query index minus key index over the concatenated
``[memory; segment]`` axis), so the same weights work whatever the absolute offset.

Data: every stream draws its tokens from its own small palette (a unigram signal that the memory
sharpens), and most tokens repeat the token ``PERIOD`` = 13 positions back (probability
``P_COPY``). That source always lies in the previous segment: for the later positions of a
segment it is within one layer's reach (``MEM_LEN`` = 8 memory slots), for the first four only
through two hops (the second layer reading the first layer's memory, which itself attended to the
segment before), the way Transformer-XL's context grows with depth.

Training: one optimizer step per segment, memory carried across steps within a stream and reset
for each new batch of streams. SGD with Nesterov momentum, cosine learning-rate decay, gradient
norm clipping. Validation: per-token cross-entropy over held-out streams, run with memory the
same way.
"""

import argparse
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 16
SEG_LEN = 12
MEM_LEN = 8
PERIOD = 13
P_COPY = 0.6
PALETTE = 4
P_STRAY = 0.1
SEGS_PER_STREAM = 6

D_MODEL = 48
N_HEAD = 4
D_INNER = 96
N_LAYER = 2

BATCH = 16
BASE_LR = 0.4
MOMENTUM = 0.9
CLIP = 0.5
N_VAL_STREAMS = 64


def make_streams(n, gen):
    """Each stream draws from its own small palette of tokens; most tokens then repeat the token
    ``PERIOD`` positions back."""
    length = SEG_LEN * SEGS_PER_STREAM + 1  # + the last segment's last target
    palette = torch.rand(n, VOCAB, generator=gen).argsort(dim=1)[:, :PALETTE]
    fresh = palette.gather(1, torch.randint(0, PALETTE, (n, length), generator=gen))
    stray = torch.rand(n, length, generator=gen) < P_STRAY
    fresh = torch.where(stray, torch.randint(0, VOCAB, (n, length), generator=gen), fresh)
    copy = torch.rand(n, length, generator=gen) < P_COPY
    x = fresh.clone()
    for t in range(PERIOD, length):
        x[:, t] = torch.where(copy[:, t], x[:, t - PERIOD], fresh[:, t])
    return x


class RelMultiHeadAttn(nn.Module):
    def __init__(self):
        super().__init__()
        self.d_head = D_MODEL // N_HEAD
        self.q_net = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.kv_net = nn.Linear(D_MODEL, 2 * D_MODEL, bias=False)
        self.o_net = nn.Linear(D_MODEL, D_MODEL, bias=False)
        # one learned bias per head and relative distance 0 .. MEM_LEN + SEG_LEN - 1
        self.r_bias = nn.Parameter(torch.zeros(N_HEAD, MEM_LEN + SEG_LEN))

    def forward(self, h, mem):
        qlen, bsz = h.size(1), h.size(0)
        cat = h if mem is None else torch.cat([mem, h], dim=1)
        klen, mlen = cat.size(1), cat.size(1) - qlen
        q = self.q_net(h).view(bsz, qlen, N_HEAD, self.d_head).transpose(1, 2)
        k, v = self.kv_net(cat).chunk(2, dim=-1)
        k = k.view(bsz, klen, N_HEAD, self.d_head).transpose(1, 2)
        v = v.view(bsz, klen, N_HEAD, self.d_head).transpose(1, 2)

        score = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.d_head))
        q_pos = torch.arange(mlen, klen, device=h.device)[:, None]
        k_pos = torch.arange(klen, device=h.device)[None, :]
        dist = (q_pos - k_pos).clamp(min=0)
        score = score + self.r_bias[:, dist]
        future = k_pos > q_pos  # (qlen, klen): the Transformer-XL causal mask
        score = score.masked_fill(future, float("-inf"))
        prob = torch.softmax(score, dim=-1)
        vec = torch.matmul(prob, v).transpose(1, 2).reshape(bsz, qlen, D_MODEL)
        return self.o_net(vec)


class XLLayer(nn.Module):
    """Post-norm layer as in the original Transformer-XL code."""

    def __init__(self):
        super().__init__()
        self.attn = RelMultiHeadAttn()
        self.norm_attn = nn.LayerNorm(D_MODEL)
        self.ff = nn.Sequential(nn.Linear(D_MODEL, D_INNER), nn.ReLU(), nn.Linear(D_INNER, D_MODEL))
        self.norm_ff = nn.LayerNorm(D_MODEL)

    def forward(self, h, mem):
        h = self.norm_attn(h + self.attn(h, mem))
        return self.norm_ff(h + self.ff(h))


class TransformerXL(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_emb = nn.Embedding(VOCAB, D_MODEL)
        self.layers = nn.ModuleList([XLLayer() for _ in range(N_LAYER)])
        self.out_layer = nn.Linear(D_MODEL, VOCAB)

    def init_mems(self):
        return [None] * N_LAYER

    def forward(self, tokens, mems):
        h = self.word_emb(tokens)
        new_mems = []
        for layer, mem in zip(self.layers, mems, strict=False):
            # what this layer saw (memory + the new segment), cut to MEM_LEN, no gradient
            seen = h if mem is None else torch.cat([mem, h], dim=1)
            new_mems.append(seen[:, -MEM_LEN:].detach())
            h = layer(h, mem)
        return self.out_layer(h), new_mems


def stream_batches(streams):
    for s in range(SEGS_PER_STREAM):
        seg = streams[:, s * SEG_LEN:(s + 1) * SEG_LEN]
        # the target of a segment's last token is the next segment's first token
        nxt = streams[:, s * SEG_LEN + 1:(s + 1) * SEG_LEN + 1]
        yield seg, nxt


def to_json(v):
    return v if math.isfinite(v) else "nan"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=240)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(555 + args.seed)
    val_streams = make_streams(N_VAL_STREAMS, g)

    model = TransformerXL()
    opt = torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=MOMENTUM, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps, eta_min=0.0)

    losses = []
    step = 0
    model.train()
    while step < args.steps:
        mems = model.init_mems()  # new streams: empty memory
        for seg, target in stream_batches(make_streams(BATCH, g)):
            if step >= args.steps:
                break
            logits, mems = model(seg, mems)
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if (step + 1) % (3 * SEGS_PER_STREAM) == 0:
                recent = sum(losses[-SEGS_PER_STREAM:]) / SEGS_PER_STREAM
                lr_now = sched.get_last_lr()[0]
                print(f"step {step:4d} | loss/stream {recent:.3f} | lr {lr_now:.4f}")
            step += 1

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        mems = model.init_mems()
        for seg, target in stream_batches(val_streams):
            logits, mems = model(seg, mems)
            total += F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1),
                                     reduction="sum").item()
            count += target.numel()
    val_loss = total / count
    print(f"validation loss {val_loss:.4f}")
    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": to_json(losses[0]),
        "train_loss": to_json(sum(losses[-tail:]) / tail),
        "val_loss": to_json(val_loss),
    }))


if __name__ == "__main__":
    main()
