"""Knowledge distillation of a wide frozen transformer teacher into a narrow SDPA student.

Task: [CLS] + token sequences of 8..20 words (right-padded) drawn from 6 word classes (6 words
each) and filler words; the label is the class with the most words in the sequence, a tie
going to the class of the first word.

Teacher (outside the optimized model): a 128-wide, 2-layer ``nn.TransformerEncoder``
(pre-norm, key-padding mask) with masked mean pooling, built deterministically: its encoder
keeps its random initialisation and only its linear read-out is fitted, in closed form (ridge
regression of the one-hot labels on the pooled features of 2000 fitting sequences). It is then
frozen (``requires_grad_(False)``, ``eval()``) and queried under ``torch.no_grad()``.

Student (the root model handed to the optimizer): 32-wide, 2 pre-LN blocks whose attention
calls ``F.scaled_dot_product_attention`` with a boolean key-padding mask, read-out from the
leading [CLS] position, LayerNorm, linear classifier. Its forward runs under
``torch.autocast("cpu", bfloat16)``; the losses are computed in float32:

    loss = ALPHA * T^2 * KLDivLoss(log_softmax(s / T), softmax(t / T)) + (1 - ALPHA) * CE(s, y)

with T = 3. Optimizer: Adadelta. Validation reports the same objective on held-out sequences.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0
CLS = 1
N_CLASSES = 6
WORDS_PER_CLASS = 6
N_FILLER = 16
FILLER0 = 2 + N_CLASSES * WORDS_PER_CLASS
VOCAB = FILLER0 + N_FILLER
MIN_LEN, MAX_LEN = 8, 20

TEMPERATURE = 3.0
ALPHA = 0.7
TEACHER_WIDTH = 128
TEACHER_FIT = 2000
RIDGE = 1e-2
TEACHER_SHARPNESS = 6.0
STUDENT_WIDTH = 32
BATCH = 32
LR = 0.5
N_VAL = 512


def sample(n, gen):
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (n,), generator=gen)
    valid = torch.arange(MAX_LEN)[None, :] < lengths[:, None]
    is_class_word = torch.rand(n, MAX_LEN, generator=gen) < 0.45
    classes = torch.randint(0, N_CLASSES, (n, MAX_LEN), generator=gen)
    # each sequence leans towards two classes, so that counts are close and matter
    favourites = torch.randint(0, N_CLASSES, (n, 2), generator=gen)
    lean = torch.rand(n, MAX_LEN, generator=gen) < 0.5
    pick = torch.randint(0, 2, (n, MAX_LEN), generator=gen)
    classes = torch.where(lean, favourites.gather(1, pick), classes)
    words = 2 + classes * WORDS_PER_CLASS
    words += torch.randint(0, WORDS_PER_CLASS, (n, MAX_LEN), generator=gen)
    fillers = FILLER0 + torch.randint(0, N_FILLER, (n, MAX_LEN), generator=gen)
    tokens = torch.where(is_class_word, words, fillers).masked_fill(~valid, PAD)

    counted = is_class_word & valid
    counts = torch.zeros(n, N_CLASSES).scatter_add_(1, classes, counted.float())
    first = torch.where(is_class_word[:, 0], classes[:, 0], N_CLASSES)
    bonus = F.one_hot(first, N_CLASSES + 1)[:, :N_CLASSES].float() * 0.5
    labels = (counts + bonus).argmax(1)
    # a [CLS] token in front: the student reads its prediction from there
    tokens = torch.cat([torch.full((n, 1), CLS), tokens], dim=1)
    valid = torch.cat([torch.ones(n, 1, dtype=torch.bool), valid], dim=1)
    return tokens, valid, labels


def masked_mean(h, valid):
    w = valid.unsqueeze(-1).to(h.dtype)
    return (h * w).sum(1) / w.sum(1)


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, TEACHER_WIDTH, padding_idx=PAD)
        self.pos = nn.Parameter(0.02 * torch.randn(MAX_LEN + 1, TEACHER_WIDTH))
        layer = nn.TransformerEncoderLayer(
            TEACHER_WIDTH, 4, 4 * TEACHER_WIDTH, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.readout = nn.Linear(TEACHER_WIDTH, N_CLASSES)

    def features(self, tokens, valid):
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        h = self.encoder(h, src_key_padding_mask=~valid)
        return masked_mean(h, valid)

    def forward(self, tokens, valid):
        return self.readout(self.features(tokens, valid))

    @torch.no_grad()
    def fit_readout(self, tokens, valid, labels):
        feats = self.features(tokens, valid)
        mean = feats.mean(0)
        x = feats - mean
        y = F.one_hot(labels, N_CLASSES).float()
        y = y - y.mean(0)
        gram = x.T @ x / len(x) + RIDGE * torch.eye(TEACHER_WIDTH)
        w = torch.linalg.solve(gram, x.T @ y / len(x))
        self.readout.weight.copy_(TEACHER_SHARPNESS * w.T)
        self.readout.bias.copy_(-TEACHER_SHARPNESS * (mean @ w))


class Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, valid):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x, valid):
        x = x + self.attn(self.norm1(x), valid)
        return x + self.mlp(self.norm2(x))


class Student(nn.Module):
    def __init__(self, width=STUDENT_WIDTH, heads=2, depth=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width, padding_idx=PAD)
        self.pos = nn.Embedding(MAX_LEN + 1, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, N_CLASSES)

    def forward(self, tokens, valid):
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, valid)
        return self.head(self.final_norm(x[:, 0]))


kl_div = nn.KLDivLoss(reduction="batchmean")


def distill_loss(student_logits, teacher_logits, labels):
    s = student_logits.float()
    soft = kl_div(
        F.log_softmax(s / TEMPERATURE, dim=-1), F.softmax(teacher_logits / TEMPERATURE, dim=-1)
    )
    hard = F.cross_entropy(s, labels)
    return ALPHA * TEMPERATURE**2 * soft + (1 - ALPHA) * hard


def student_logits(student, tokens, valid):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return student(tokens, valid)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=250)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(77 + args.seed)

    teacher = Teacher()
    teacher.eval()
    teacher.fit_readout(*sample(TEACHER_FIT, gen))
    teacher.requires_grad_(False)

    val_tokens, val_valid, val_labels = sample(N_VAL, gen)
    with torch.no_grad():
        val_teacher = teacher(val_tokens, val_valid)
    teacher_acc = (val_teacher.argmax(1) == val_labels).float().mean().item()
    print(f"teacher accuracy {teacher_acc:.3f}")

    student = Student()
    optimizer = torch.optim.Adadelta(student.parameters(), lr=LR, rho=0.9)

    history = []
    student.train()
    for step in range(args.steps):
        tokens, valid, labels = sample(BATCH, gen)
        with torch.no_grad():
            t_logits = teacher(tokens, valid)
        loss = distill_loss(student_logits(student, tokens, valid), t_logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if step % 15 == 0 or step + 1 == args.steps:
            print(f"step {step:3d}/{args.steps}: kd loss {history[-1]:.4f}")

    student.eval()
    with torch.no_grad():
        logits = student_logits(student, val_tokens, val_valid)
        val_loss = distill_loss(logits, val_teacher, val_labels).item()
        acc = (logits.argmax(1) == val_labels).float().mean().item()
    print(f"validation: kd loss {val_loss:.4f}, student accuracy {acc:.3f}")

    n_tail = max(1, len(history) // 10)
    out = {
        "first_loss": history[0],
        "train_loss": sum(history[-n_tail:]) / n_tail,
        "val_loss": val_loss,
    }
    out = {k: (v if math.isfinite(v) else "nan") for k, v in out.items()}
    print("CORPUS_RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
