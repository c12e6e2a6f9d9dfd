"""Intent classification with an LSTM and Bahdanau (additive) attention pooling.

Utterances of 10 to 24 tokens, right-padded. Each holds one keyword of its intent (4 intents, two
keywords each) among filler words; most also hold up to two *negated* keywords of other intents
("not <keyword>"), which must be ignored, and a stray "not" before a filler. The encoder is a
bidirectional LSTM run on packed sequences; its final states form the query of an additive
attention over the encoder states (``v . tanh(W_k h_t + W_q q)``, padding masked with ``-inf``),
and the classifier sees only the attention's context vector. Adam, ``clip_grad_norm_``, and
``F.cross_entropy`` with label smoothing.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD, NOT = 0, 1
INTENTS = 4
KEYWORDS = torch.arange(2, 2 + 2 * INTENTS).view(INTENTS, 2)   # intent i <- KEYWORDS[i]
FIRST_FILLER, VOCAB = 2 + 2 * INTENTS, 48
SHORTEST, LONGEST = 10, 24
DECOYS = 2


def utterances(n, gen):
    """(tokens (n, LONGEST), lengths (n,), intents (n,))."""
    tokens = torch.full((n, LONGEST), PAD)
    lengths = torch.randint(SHORTEST, LONGEST + 1, (n,), generator=gen)
    intents = torch.randint(0, INTENTS, (n,), generator=gen)
    for i in range(n):
        length, intent = int(lengths[i]), int(intents[i])
        words = torch.randint(FIRST_FILLER, VOCAB, (length,), generator=gen)
        slots = torch.randperm(length - 1, generator=gen) + 1   # never position 0 ("not" room)
        pick = torch.randint(0, 2, (1 + DECOYS,), generator=gen)
        words[slots[0]] = KEYWORDS[intent, pick[0]]
        for decoy in range(DECOYS):                               # "not <other keyword>"
            other = (intent + 1 + int(torch.randint(0, INTENTS - 1, (1,), generator=gen))) % INTENTS
            at = int(slots[1 + decoy])
            if words[at - 1] >= FIRST_FILLER and words[at] >= FIRST_FILLER:
                words[at] = KEYWORDS[other, pick[1 + decoy]]
                words[at - 1] = NOT
        stray = int(slots[1 + DECOYS])
        if words[stray] >= FIRST_FILLER and words[stray - 1] >= FIRST_FILLER:
            words[stray - 1] = NOT                                # "not <filler>": harmless
        tokens[i, :length] = words
    return tokens, lengths, intents


class AdditiveAttention(nn.Module):
    """Bahdanau scoring: e_t = v . tanh(W_k h_t + W_q q); softmax over the valid steps."""

    def __init__(self, key_dim, query_dim, attn_dim):
        super().__init__()
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)
        self.query_proj = nn.Linear(query_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, states, query, pad_mask):
        energy = self.v(torch.tanh(self.key_proj(states) + self.query_proj(query)[:, None]))
        energy = energy.squeeze(-1).masked_fill(pad_mask, float("-inf"))
        weights = F.softmax(energy, dim=-1)
        return torch.bmm(weights[:, None], states).squeeze(1)


class IntentClassifier(nn.Module):
    def __init__(self, emb=32, hidden=32, attn=32, intents=INTENTS):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, emb, padding_idx=PAD)
        self.encoder = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.attention = AdditiveAttention(2 * hidden, 2 * hidden, attn)
        self.output = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(),
                                    nn.Linear(hidden, intents))

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True,
                                      enforce_sorted=False)
        out, (h_n, _) = self.encoder(packed)
        states, _ = pad_packed_sequence(out, batch_first=True)
        summary = torch.cat([h_n[0], h_n[1]], dim=-1)       # last forward + first backward state
        pad_mask = torch.arange(states.shape[1])[None, :] >= lengths[:, None]
        context = self.attention(states, summary, pad_mask)
        return self.output(context)


def train_step(model, optimizer, batch, max_norm, smoothing):
    tokens, lengths, intents = batch
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(tokens, lengths), intents, label_smoothing=smoothing)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def evaluate(model, batch, smoothing):
    tokens, lengths, intents = batch
    model.eval()
    logits = model(tokens, lengths)
    loss = F.cross_entropy(logits, intents, label_smoothing=smoothing).item()
    return loss, (logits.argmax(-1) == intents).float().mean().item()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="BiLSTM + Bahdanau attention intent classifier")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-norm", type=float, default=1.0)
    ap.add_argument("--label-smoothing", type=float, default=0.05)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 2024)
    held_out = utterances(400, gen)
    model = IntentClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    losses = []
    for step in range(1, args.steps + 1):
        batch = utterances(args.batch_size, gen)
        losses.append(train_step(model, optimizer, batch, args.max_norm, args.label_smoothing))
        if step % 30 == 0:
            print(f"step {step}: train loss {losses[-1]:.4f}")
    val_loss, val_acc = evaluate(model, held_out, args.label_smoothing)
    print(f"held-out loss {val_loss:.4f}, accuracy {val_acc:.3f}")

    tail = losses[-max(1, args.steps // 10):]
    report = {"first_loss": losses[0], "train_loss": sum(tail) / len(tail), "val_loss": val_loss}
    print("CORPUS_RESULT " + json.dumps(
        {key: value if math.isfinite(value) else "nan" for key, value in report.items()}))
