"""Masked-language-model pretraining written by hand: a tiny BERT-style encoder on Markov text.

A one-layer post-LayerNorm encoder (BERT layout: separate query/key/value Linear, torch.matmul
scores, an additive extended attention mask ``(1 - mask) * -10000`` for padding, F.softmax,
dense + LayerNorm output, GELU intermediate), token + learned position embeddings with an
embedding LayerNorm, an MLM transform head whose decoder is tied to the word embeddings. Random
15% masking with the 80/10/10 rule, loss F.cross_entropy(ignore_index=-100) on masked slots only.
Sequences come from a sparse random Markov chain, so a masked token is predictable only from its
neighbours (attention is the only route to them). Adam with the embeddings in a param group of
their own (its own LR setting), a step-decay schedule and gradient-norm clipping.
"""

import argparse
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 18  # 0 = [PAD], 1 = [MASK], 2.. = words
PAD, MASK = 0, 1
WORDS = VOCAB - 2
SEQ_LEN = (14, 24)
SUCCESSORS = 2


def markov_table(gen):
    """Each word has a few likely successors (a sparse random transition matrix)."""
    probs = torch.full((WORDS, WORDS), 0.02 / WORDS)
    for w in range(WORDS):
        nxt = torch.randperm(WORDS, generator=gen)[:SUCCESSORS]
        probs[w, nxt] += torch.tensor([0.8, 0.2])[:SUCCESSORS] * 0.98
    return probs / probs.sum(1, keepdim=True)


def make_batch(gen, table, batch_size):
    """(input_ids, attention_mask, labels) with 15% of the real tokens masked (80/10/10)."""
    n = SEQ_LEN[1]
    words = torch.zeros(batch_size, n, dtype=torch.long)
    words[:, 0] = torch.randint(0, WORDS, (batch_size,), generator=gen)
    for t in range(1, n):
        words[:, t] = torch.multinomial(table[words[:, t - 1]], 1, generator=gen).squeeze(1)
    ids = words + 2
    lengths = torch.randint(SEQ_LEN[0], SEQ_LEN[1] + 1, (batch_size, 1), generator=gen)
    attention_mask = (torch.arange(n)[None, :] < lengths).long()
    ids = ids * attention_mask
    chosen = (torch.rand(batch_size, n, generator=gen) < 0.15) & attention_mask.bool()
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(batch_size, n, generator=gen)
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(ids, MASK), ids)
    random_words = torch.randint(2, VOCAB, ids.shape, generator=gen)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_words, inputs)
    return inputs, attention_mask, labels


class SelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.head_size = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def transpose_for_scores(self, x):
        return x.view(*x.shape[:-1], self.heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, hidden_states, extended_mask):
        q = self.transpose_for_scores(self.query(hidden_states))
        k = self.transpose_for_scores(self.key(hidden_states))
        v = self.transpose_for_scores(self.value(hidden_states))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        probs = F.softmax(scores + extended_mask, dim=-1)
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return context.view(*context.shape[:2], -1)


class EncoderLayer(nn.Module):
    def __init__(self, hidden, heads, intermediate):
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x, extended_mask):
        x = self.attention_norm(x + self.attention_output(self.attention(x, extended_mask)))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class MaskedLM(nn.Module):
    def __init__(self, hidden=48, heads=4, layers=1, intermediate=96):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, hidden, padding_idx=PAD)
        self.position_embeddings = nn.Embedding(SEQ_LEN[1], hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, intermediate)
                                    for _ in range(layers))
        self.transform = nn.Linear(hidden, hidden)
        self.transform_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.decoder = nn.Linear(hidden, VOCAB)
        self.decoder.weight = self.word_embeddings.weight  # tied
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.size(1))[None, :]
        h = self.embedding_norm(self.word_embeddings(input_ids)
                                + self.position_embeddings(positions))
        extended_mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            h = layer(h, extended_mask)
        h = self.transform_norm(F.gelu(self.transform(h)))
        return self.decoder(h)


def mlm_loss(logits, labels):
    return F.cross_entropy(logits.view(-1, VOCAB), labels.view(-1), ignore_index=-100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(31 + args.seed)
    table = markov_table(gen)
    val_batches = [make_batch(gen, table, 128) for _ in range(2)]

    model = MaskedLM()
    embeddings = [p for n, p in model.named_parameters() if "embeddings" in n]
    rest = [p for n, p in model.named_parameters() if "embeddings" not in n]
    optimizer = torch.optim.Adam([{"params": rest}, {"params": embeddings, "lr": 3e-3}],
                                 lr=3e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[int(args.steps * 0.6), int(args.steps * 0.85)], gamma=0.4)

    history = []
    for step in range(args.steps):
        model.train()
        input_ids, attention_mask, labels = make_batch(gen, table, args.batch_size)
        loss = mlm_loss(model(input_ids, attention_mask), labels)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if (step + 1) % 30 == 0:
            print(f"step {step + 1}: mlm loss {sum(history[-30:]) / 30:.4f}")

    model.eval()
    with torch.no_grad():
        val_loss = sum(mlm_loss(model(i, m), y).item() for i, m, y in val_batches)
        val_loss /= len(val_batches)
    print(f"validation mlm loss {val_loss:.4f}")

    tail = max(1, args.steps // 10)
    result = {"first_loss": history[0], "train_loss": sum(history[-tail:]) / tail,
              "val_loss": val_loss}
    result = {k: (v if math.isfinite(v) else "nan") for k, v in result.items()}
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
