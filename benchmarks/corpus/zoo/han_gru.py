"""Hierarchical Attention Network (Yang et al., 2016) on synthetic documents.

A document is SENTS sentences of WORDS word ids. Filler words are drawn at random; one
sentence of each document holds a "topic" keyword pair: a cue word immediately followed by
a topic word. The topic word alone is ambiguous (it also occurs as filler); only after the cue
does it decide the class. Word-level BiGRU + attention finds the pair, sentence-level BiGRU +
attention finds the sentence.
"""

import argparse
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 60
CUE = 1
TOPIC_WORDS = (2, 3, 4, 5)          # class k <- word TOPIC_WORDS[k] right after CUE
FILLER_LOW = 2                      # fillers include topic words, so the cue matters
SENTS, WORDS = 4, 10


def make_documents(n, rng):
    docs = torch.randint(FILLER_LOW, VOCAB, (n, SENTS, WORDS), generator=rng)
    labels = torch.randint(0, len(TOPIC_WORDS), (n,), generator=rng)
    sent = torch.randint(0, SENTS, (n,), generator=rng)
    pos = torch.randint(0, WORDS - 1, (n,), generator=rng)
    rows = torch.arange(n)
    docs[rows, sent, pos] = CUE
    docs[rows, sent, pos + 1] = torch.tensor(TOPIC_WORDS)[labels]
    return docs, labels


class AdditiveAttention(nn.Module):
    """u_t = tanh(W h_t + b); a_t = softmax(u_t . u_ctx); s = sum_t a_t h_t."""

    def __init__(self, in_dim, attn_dim):
        super().__init__()
        self.proj = nn.Linear(in_dim, attn_dim)
        self.context = nn.Parameter(torch.empty(attn_dim))
        nn.init.normal_(self.context, std=0.1)

    def forward(self, h):
        u = torch.tanh(self.proj(h))
        scores = u @ self.context
        alpha = torch.softmax(scores, dim=-1)
        return (alpha.unsqueeze(-1) * h).sum(dim=1)


class HAN(nn.Module):
    def __init__(self, vocab, emb_dim=32, hid=24, n_classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb_dim)
        self.word_gru = nn.GRU(emb_dim, hid, batch_first=True, bidirectional=True)
        self.word_attn = AdditiveAttention(2 * hid, 2 * hid)
        self.sent_gru = nn.GRU(2 * hid, hid, batch_first=True, bidirectional=True)
        self.sent_attn = AdditiveAttention(2 * hid, 2 * hid)
        self.fc = nn.Linear(2 * hid, n_classes)

    def forward(self, docs):
        b, s, w = docs.shape
        words = self.embed(docs.view(b * s, w))
        word_states, _ = self.word_gru(words)
        sent_vecs = self.word_attn(word_states).view(b, s, -1)
        sent_states, _ = self.sent_gru(sent_vecs)
        doc_vec = self.sent_attn(sent_states)
        return self.fc(doc_vec)


def main():
    p = argparse.ArgumentParser(description="HAN on synthetic documents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--clip", type=float, default=5.0)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    rng = torch.Generator().manual_seed(a.seed + 100)
    dev_docs, dev_labels = make_documents(256, rng)

    han = HAN(VOCAB)
    sgd = torch.optim.SGD(han.parameters(), lr=a.lr, momentum=0.9)

    seen = []
    for i in range(a.steps):
        docs, labels = make_documents(a.batch, rng)
        han.train()
        sgd.zero_grad()
        loss = F.cross_entropy(han(docs), labels)
        loss.backward()
        nn.utils.clip_grad_norm_(han.parameters(), a.clip)
        sgd.step()
        seen.append(loss.item())
        if i % 30 == 0:
            print(f"{i:4d} {seen[-1]:.4f}")

    han.eval()
    with torch.no_grad():
        logits = han(dev_docs)
        dev_loss = F.cross_entropy(logits, dev_labels).item()
    print(f"dev loss {dev_loss:.4f} acc {(logits.argmax(1) == dev_labels).float().mean():.3f}")

    tail = seen[-max(1, a.steps // 10):]
    res = dict(first_loss=seen[0], train_loss=sum(tail) / len(tail), val_loss=dev_loss)
    res = {k: v if math.isfinite(v) else "nan" for k, v in res.items()}
    print("CORPUS_RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
