"""han_healthy.py with one bug: the gradient clipping line is gone. Under SGD with momentum at lr
1.0 the word-level GRU (word_rnn) has gradient explosions (its gradient norm jumps 10-50x within
one step, the embeddings' with it): the loss first falls as in the healthy run, then a spike throws
it back above chance level and training never recovers.
Whether and when it explodes is chance: over seeds 0-7 run with 1 and 2 threads, 12 of the 16 runs
fail (seed 4 within 50 steps on both; the default seed 0 only with 2 threads, since the float
reduction order decides). With clipping (han_healthy.py) all of the seeds checked converge.

Run: python sample_programs/han_no_clip.py [--steps 900] [--seed 0]
"""

import argparse
import json
import math

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, SENTENCES, WORDS, CLASSES = 40, 6, 10, 4
PAD, TOPIC = 0, 1
KEYS = (2, 3, 4, 5)
FIRST_FILLER = 6


def attention_pool(
    h: torch.Tensor, attention: nn.Linear, context: nn.Linear, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = context(torch.tanh(attention(h))).squeeze(-1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=1)
    return (weights.unsqueeze(-1) * h).sum(dim=1), weights


class HierarchicalAttentionNetwork(nn.Module):
    def __init__(self, vocab: int, classes: int, emb_dim: int = 32, word_hidden: int = 32,
                 sent_hidden: int = 32, att_dim: int = 32) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab, emb_dim, padding_idx=PAD)
        self.word_rnn = nn.GRU(emb_dim, word_hidden, batch_first=True, bidirectional=True)
        self.word_attention = nn.Linear(2 * word_hidden, att_dim)
        self.word_context_vector = nn.Linear(att_dim, 1, bias=False)
        self.sent_rnn = nn.GRU(2 * word_hidden, sent_hidden, batch_first=True, bidirectional=True)
        self.sent_attention = nn.Linear(2 * sent_hidden, att_dim)
        self.sent_context_vector = nn.Linear(att_dim, 1, bias=False)
        self.classifier = nn.Linear(2 * sent_hidden, classes)

    def forward(self, docs: torch.Tensor) -> torch.Tensor:
        b, s, w = docs.shape
        words = docs.view(b * s, w)
        h, _ = self.word_rnn(self.embeddings(words))
        sentences, _ = attention_pool(h, self.word_attention, self.word_context_vector,
                                      mask=words != PAD)
        h, _ = self.sent_rnn(sentences.view(b, s, -1))
        document, _ = attention_pool(h, self.sent_attention, self.sent_context_vector)
        return self.classifier(document)


def make_dataset(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    docs = torch.randint(FIRST_FILLER, VOCAB, (n, SENTENCES, WORDS), generator=gen)
    lengths = torch.randint(4, WORDS + 1, (n, SENTENCES), generator=gen)
    docs[torch.arange(WORDS) >= lengths.unsqueeze(-1)] = PAD
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    for i in range(n):
        topic = int(torch.randint(0, SENTENCES, (1,), generator=gen))
        for s in range(SENTENCES):
            where = torch.randperm(int(lengths[i, s]), generator=gen)[:2].tolist()
            if s == topic:
                docs[i, s, where[0]], docs[i, s, where[1]] = TOPIC, KEYS[labels[i]]
            elif torch.rand(1, generator=gen).item() < 0.7:
                docs[i, s, where[0]] = KEYS[int(torch.randint(0, CLASSES, (1,), generator=gen))]
    return docs, labels


@torch.no_grad()
def accuracy(model: nn.Module, docs: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = (model(docs).argmax(-1) == labels).float().mean().item()
    model.train()
    return correct


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--checkpoint", default=None, help="save losses and weights here")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_x, train_y = make_dataset(gen, 4096)
    eval_x, eval_y = make_dataset(gen, 1024)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train_x, train_y), batch_size=args.batch_size,
        shuffle=True, drop_last=True,
    )

    model = HierarchicalAttentionNetwork(VOCAB, CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    losses: list[float] = []
    step = 0
    while step < args.steps:
        for docs, labels in loader:
            step += 1
            logits = model(docs)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step % 50 == 0 or step == 1:
                acc = (logits.argmax(-1) == labels).float().mean().item()
                print(f"step {step:4d}  loss {loss.item():.4f}  acc {acc:.2f}")
            if step == args.steps:
                break

    tail = losses[-max(1, len(losses) // 10):]
    result = {
        "final_loss": sum(tail) / len(tail),
        "train_acc": accuracy(model, train_x, train_y),
        "eval_acc": accuracy(model, eval_x, eval_y),
        "nan_step": next((i for i, v in enumerate(losses, 1) if not math.isfinite(v)), None),
        "steps": len(losses),
    }
    if args.checkpoint:
        torch.save({"losses": losses, "states": [model.state_dict()]}, args.checkpoint)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
