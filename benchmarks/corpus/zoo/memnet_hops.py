"""End-to-end memory network (MemN2N, Sukhbaatar et al. 2015) on a synthetic bAbI-like task.

Stories of 4..12 sentences: "<person> moved/went/journeyed/travelled to (the) <place>" facts
mixed with distractors "<person> picked up (the) <object>" / "<person> dropped (the) <object>".
The question is "where is <person>"; the answer is the place of that person's most recent move
(earlier moves of the same person and everybody else's moves are distractors).

Model: every sentence is embedded as a position-encoded bag of words (the PE weighting of the
paper) plus a temporal-encoding vector for its age (memory slot 0 holds the newest sentence;
slots past the story's end are empty and masked out of the attention). Three hops of attention
over the memory: match the controller state u against the input memory, a softmax over memory
slots, read the weighted sum of the output memory and add it to u. Adjacent weight tying: the
output embedding of hop k is the input embedding of hop k+1 and the question uses the first
input embedding (4 embedding sets for 3 hops). A linear answer layer over the 8 places;
``F.cross_entropy``. ``torch.optim.Adamax``, ``clip_grad_norm_`` and a ``StepLR`` schedule.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0
PEOPLE = list(range(1, 9))
PLACES = list(range(9, 17))
OBJECTS = list(range(17, 21))
MOVED, WENT, JOURNEYED, TRAVELLED, TO, THE = 21, 22, 23, 24, 25, 26
PICKED, UP, DROPPED, WHERE, IS = 27, 28, 29, 30, 31
VOCAB = 32
MEMORY, SENT_LEN, HOPS, DIM = 12, 5, 3, 32

BATCH, STEPS = 32, 400
LR, CLIP, LR_STEP, LR_GAMMA = 1e-2, 1.0, 200, 0.5
VAL_STORIES = 512


def make_stories(n, rng):
    """Memory (n, MEMORY, SENT_LEN), slot mask (n, MEMORY), question (n, 3), answer (n,)."""
    memory = torch.zeros(n, MEMORY, SENT_LEN, dtype=torch.long)
    filled = torch.zeros(n, MEMORY, dtype=torch.bool)
    question = torch.zeros(n, 3, dtype=torch.long)
    answer = torch.zeros(n, dtype=torch.long)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    for b in range(n):
        length = int(torch.randint(4, MEMORY + 1, (1,), generator=rng))
        cast = [PEOPLE[i] for i in torch.randperm(len(PEOPLE), generator=rng)[:4].tolist()]
        where = {}
        story = []
        for _ in range(length):
            who = pick(cast)
            if torch.rand(1, generator=rng).item() < 0.7:
                place = pick(PLACES)
                words = [who, pick([MOVED, WENT, JOURNEYED, TRAVELLED]), TO]
                if torch.rand(1, generator=rng).item() < 0.5:
                    words.append(THE)
                words.append(place)
                where[who] = place
            else:
                words = [who, PICKED, UP] if torch.rand(1, generator=rng).item() < 0.5 else [
                    who, DROPPED]
                words += [THE, pick(OBJECTS)]
            story.append(words)
        if not where:  # make sure someone moved
            who, place = cast[0], pick(PLACES)
            story[-1] = [who, MOVED, TO, place]
            where[who] = place
        asked = pick(sorted(where))
        for slot, words in enumerate(reversed(story)):  # slot 0 = newest sentence
            memory[b, slot, : len(words)] = torch.tensor(words)
            filled[b, slot] = True
        question[b] = torch.tensor([WHERE, IS, asked])
        answer[b] = PLACES.index(where[asked])
    return memory, filled, question, answer


def position_encoding(length, dim):
    """l_kj = (1 - j/J) - (k/d)(1 - 2j/J), j and k counted from 1 (section 4.1 of the paper)."""
    j = torch.arange(1, length + 1, dtype=torch.float32)[:, None]
    k = torch.arange(1, dim + 1, dtype=torch.float32)[None, :]
    return (1 - j / length) - (k / dim) * (1 - 2 * j / length)


class SentenceEmbedding(nn.Module):
    """One embedding set: word vectors (position-weighted bag of words) + temporal vectors."""

    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(VOCAB, DIM, padding_idx=PAD)
        self.temporal = nn.Embedding(MEMORY, DIM)
        nn.init.normal_(self.words.weight, std=0.3)
        nn.init.normal_(self.temporal.weight, std=0.3)
        with torch.no_grad():
            self.words.weight[PAD].zero_()
        self.register_buffer("pe", position_encoding(SENT_LEN, DIM), persistent=False)

    def forward(self, sentences, temporal=True):
        vectors = (self.words(sentences) * self.pe[: sentences.shape[-1]]).sum(dim=-2)
        if temporal:
            vectors = vectors + self.temporal.weight[: sentences.shape[1]]
        return vectors


class MemoryHop(nn.Module):
    """One hop: attention of the controller state over the memory slots."""

    def forward(self, u, memory_in, memory_out, filled):
        scores = torch.einsum("bd,bmd->bm", u, memory_in)
        scores = scores.masked_fill(~filled, float("-inf"))
        weights = F.softmax(scores, dim=-1)
        return u + torch.einsum("bm,bmd->bd", weights, memory_out)


class MemN2N(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = nn.ModuleList(SentenceEmbedding() for _ in range(HOPS + 1))
        self.hops = nn.ModuleList(MemoryHop() for _ in range(HOPS))
        self.answer = nn.Linear(DIM, len(PLACES), bias=False)

    def forward(self, memory, filled, question):
        u = self.embeddings[0](question[:, None, :], temporal=False)[:, 0]
        for k, hop in enumerate(self.hops):
            m_in = self.embeddings[k](memory)  # A^k = C^(k-1)
            m_out = self.embeddings[k + 1](memory)  # C^k
            u = hop(u, m_in, m_out, filled)
        return self.answer(u)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = torch.Generator().manual_seed(2015 + args.seed)
    val = make_stories(VAL_STORIES, rng)

    net = MemN2N()
    opt = torch.optim.Adamax(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=LR_STEP, gamma=LR_GAMMA)

    losses = []
    for step in range(args.steps):
        net.train()
        memory, filled, question, answer = make_stories(BATCH, rng)
        loss = F.cross_entropy(net(memory, filled, question), answer)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step={step} loss={losses[-1]:.4f}")

    net.eval()
    with torch.no_grad():
        logits = net(val[0], val[1], val[2])
        val_loss = float(F.cross_entropy(logits, val[3]))
        accuracy = float((logits.argmax(-1) == val[3]).float().mean())
    print(f"val_loss={val_loss:.4f} accuracy={accuracy:.3f}")

    tail = losses[-max(1, len(losses) // 10):]
    out = {"first_loss": losses[0], "train_loss": sum(tail) / len(tail), "val_loss": val_loss}
    out = {k: (v if math.isfinite(v) else "nan") for k, v in out.items()}
    print("CORPUS_RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
