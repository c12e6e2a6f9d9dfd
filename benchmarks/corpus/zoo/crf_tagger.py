"""Transformer encoder + linear-chain CRF tagging BIO entity spans in synthetic sentences.

Sentences of 10..24 tokens (right-padded) are built from fillers and two kinds of entity
phrases: ``TITLE NAME CONT*`` (a person: O B-PER I-PER*) and ``PREP NAME CONT*`` (a place:
O B-LOC I-LOC*). NAME and CONT words are ambiguous on their own: a NAME without a title or
preposition before it is O, a CONT word continues an entity only when it follows one (it is O
after a filler). So a tag depends on the neighbouring tokens and on the previous tag.

Model: token embedding + learned absolute positions, two pre-norm encoder layers with a
hand-written multi-head attention (separate q/k/v/out projections, key padding mask applied
with masked_fill(-inf) before torch.softmax), a GELU feed-forward, then emission scores for
the 5 tags fed into a CRF with a learned transition matrix and start/end scores. The loss is
the CRF negative log-likelihood (forward algorithm with torch.logsumexp minus the gold path
score) summed over the batch and divided by the number of real tokens. Viterbi decoding gives
the validation tag accuracy.

RMSprop with a polynomial LR decay (PolynomialLR, power 2, over 1.5x the run), clip_grad_norm_ 1.
"""

import argparse
import json
import math

import torch
from torch import nn

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
N_TAGS = len(TAGS)
OUT, B_PER, I_PER, B_LOC, I_LOC = range(N_TAGS)

PAD = 0
TITLES = [1, 2]
PREPS = [3, 4]
NAMES = list(range(5, 13))
CONTS = list(range(13, 17))
FILLERS = list(range(17, 29))
VOCAB = 29
MIN_LEN, MAX_LEN = 10, 24

DIM, HEADS, FF = 48, 4, 96
BATCH = 32
LR = 7e-4
HORIZON = 1.5
POWER = 2.0
CLIP = 1.0


def _choice(options, gen):
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def make_sentence(gen):
    length = int(torch.randint(MIN_LEN, MAX_LEN + 1, (1,), generator=gen))
    words, tags = [], []
    while len(words) < length:
        r = float(torch.rand(1, generator=gen))
        if r < 0.5:  # an entity phrase: a person after a title, a place after a preposition
            person = r < 0.25
            n_cont = int(torch.randint(0, 3, (1,), generator=gen))
            words += [_choice(TITLES if person else PREPS, gen), _choice(NAMES, gen)]
            words += [_choice(CONTS, gen) for _ in range(n_cont)]
            tags += [OUT, B_PER if person else B_LOC] + [I_PER if person else I_LOC] * n_cont
        elif r < 0.8:  # lone ambiguous words: a name without trigger, continuations after it
            n_amb = int(torch.randint(1, 3, (1,), generator=gen))
            words += [_choice(FILLERS, gen)] + [_choice(NAMES + CONTS, gen) for _ in range(n_amb)]
            tags += [OUT] * (1 + n_amb)
        else:
            words.append(_choice(FILLERS, gen))
            tags.append(OUT)
    return words[:length], tags[:length]


def make_batch(n, gen):
    pairs = [make_sentence(gen) for _ in range(n)]
    width = max(len(w) for w, _ in pairs)
    tokens = torch.full((n, width), PAD, dtype=torch.long)
    tags = torch.full((n, width), OUT, dtype=torch.long)
    for i, (w, t) in enumerate(pairs):
        tokens[i, : len(w)] = torch.tensor(w)
        tags[i, : len(t)] = torch.tensor(t)
    return tokens, tags, tokens != PAD


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(DIM, DIM)
        self.k_proj = nn.Linear(DIM, DIM)
        self.v_proj = nn.Linear(DIM, DIM)
        self.out_proj = nn.Linear(DIM, DIM)
        self.head_dim = DIM // HEADS

    def split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, HEADS, self.head_dim).transpose(1, 2)

    def forward(self, x, mask):
        q, k, v = self.split(self.q_proj(x)), self.split(self.k_proj(x)), self.split(self.v_proj(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(x.shape)
        return self.out_proj(out)


class EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_attn = nn.LayerNorm(DIM)
        self.attn = SelfAttention()
        self.ln_ff = nn.LayerNorm(DIM)
        self.ff = nn.Sequential(nn.Linear(DIM, FF), nn.GELU(), nn.Linear(FF, DIM))

    def forward(self, x, mask):
        x = x + self.attn(self.ln_attn(x), mask)
        return x + self.ff(self.ln_ff(x))


class CRF(nn.Module):
    """Linear-chain CRF: score(y) = start[y0] + sum emit[t, yt] + trans[y(t-1), yt] + end[yT]."""

    def __init__(self, n_tags):
        super().__init__()
        self.transitions = nn.Parameter(torch.zeros(n_tags, n_tags))  # [from, to]
        self.start = nn.Parameter(torch.zeros(n_tags))
        self.end = nn.Parameter(torch.zeros(n_tags))

    def log_partition(self, emissions, mask):
        alpha = self.start + emissions[:, 0]  # (B, T)
        for t in range(1, emissions.shape[1]):
            step = alpha[:, :, None] + self.transitions[None] + emissions[:, t, None, :]
            alpha = torch.where(mask[:, t, None], torch.logsumexp(step, dim=1), alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def gold_score(self, emissions, tags, mask):
        score = self.start[tags[:, 0]] + emissions[:, 0].gather(1, tags[:, :1]).squeeze(1)
        for t in range(1, emissions.shape[1]):
            step = self.transitions[tags[:, t - 1], tags[:, t]]
            step = step + emissions[:, t].gather(1, tags[:, t : t + 1]).squeeze(1)
            score = score + step * mask[:, t]
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1)).squeeze(1)
        return score + self.end[last]

    def forward(self, emissions, tags, mask):
        """Negative log-likelihood summed over the batch."""
        return (self.log_partition(emissions, mask) - self.gold_score(emissions, tags, mask)).sum()

    @torch.no_grad()
    def viterbi(self, emissions, mask):
        score = self.start + emissions[:, 0]
        back = []
        for t in range(1, emissions.shape[1]):
            step = score[:, :, None] + self.transitions[None]
            best, idx = step.max(dim=1)
            back.append(idx)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
        score = score + self.end
        lengths = mask.sum(1)
        path = torch.zeros_like(mask, dtype=torch.long)
        current = score.argmax(1)
        for t in range(emissions.shape[1] - 1, -1, -1):
            inside = t < lengths
            path[:, t] = torch.where(inside, current, 0)
            if t > 0:
                prev = back[t - 1].gather(1, current[:, None]).squeeze(1)
                # follow the back-pointer only inside the sentence (t <= last position)
                current = torch.where(t <= lengths - 1, prev, current)
        return path


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB, DIM, padding_idx=PAD)
        self.pos_emb = nn.Embedding(MAX_LEN, DIM)
        self.layers = nn.ModuleList([EncoderLayer(), EncoderLayer()])
        self.ln_out = nn.LayerNorm(DIM)
        self.emit = nn.Linear(DIM, N_TAGS)
        self.crf = CRF(N_TAGS)

    def emissions(self, tokens, mask):
        positions = torch.arange(tokens.shape[1])
        h = self.tok_emb(tokens) + self.pos_emb(positions)[None]
        for layer in self.layers:
            h = layer(h, mask)
        return self.emit(self.ln_out(h))

    def forward(self, tokens, tags, mask):
        return self.crf(self.emissions(tokens, mask), tags, mask) / mask.sum()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=250)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(9001 + args.seed)
    val_tokens, val_tags, val_mask = make_batch(400, gen)

    model = Tagger()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LR, alpha=0.99, eps=1e-8)
    # polynomial decay over a horizon longer than the run, so the LR ends at ~10% of its start
    scheduler = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=int(args.steps * HORIZON), power=POWER
    )

    log = []
    for step in range(args.steps):
        model.train()
        tokens, tags, mask = make_batch(BATCH, gen)
        loss = model(tokens, tags, mask)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        log.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:3d} nll/token {log[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        emissions = model.emissions(val_tokens, val_mask)
        val_loss = (model.crf(emissions, val_tags, val_mask) / val_mask.sum()).item()
        pred = model.crf.viterbi(emissions, val_mask)
        acc = ((pred == val_tags) & val_mask).sum().item() / val_mask.sum().item()
    print(f"val nll/token {val_loss:.4f} viterbi accuracy {acc:.3f}")

    tail = log[-max(1, len(log) // 10) :]

    def clean(v):
        return v if math.isfinite(v) else "nan"

    result = {"first_loss": clean(log[0]), "train_loss": clean(sum(tail) / len(tail)),
              "val_loss": clean(val_loss)}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
