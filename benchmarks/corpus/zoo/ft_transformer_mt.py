"""An FT-Transformer for tabular data, trained on two tasks at once.

Every numeric column becomes a token ``x_j * W_j + b_j``, every categorical column a token from
one shared embedding table (per-column offsets) plus a per-column bias; a learned [CLS] token is
appended and three pre-norm blocks (``nn.MultiheadAttention(batch_first=True)`` + a ReGLU
feed-forward; the first block's attention norm left out, as in the paper) mix the tokens. The
[CLS] output feeds two heads: a regression head (MSE) and a 5-class classification head
(``F.cross_entropy``); the loss is their weighted sum. Adam with its own, larger learning rate
for the feature tokenizer and [CLS] token, gradient accumulation over 2 micro-batches per
optimizer step, a fixed training table visited in shuffled epochs.

Data: 8 numeric and 3 categorical columns; the regression target mixes feature interactions
(products, a category-dependent slope, a smooth non-linearity), the class is the argmax of
another set of interactions, so both heads need the columns to attend to one another.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

N_NUM = 8
CARDS = (5, 7, 4)
CLASSES = 5
N_TRAIN = 2048
N_VAL = 1024
MICRO_BATCH = 64
ACCUM = 2
DIM = 32
HEADS = 4
DEPTH = 3
LR = 1e-3
TOKENIZER_LR = 3e-3
CLS_WEIGHT = 0.5


def make_table(n: int, g: torch.Generator, law: dict):
    x = torch.randn(n, N_NUM, generator=g)
    cats = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], dim=1)
    slope = law["slope"][cats[:, 0]]
    y = (x[:, 0] * x[:, 1] + slope * x[:, 2] + torch.sin(2 * x[:, 3]) + 0.5 * x[:, 4].abs()
         + law["offset"][cats[:, 1]])
    y = (y - law["y_mean"]) / law["y_std"] + 0.1 * torch.randn(n, generator=g)
    scores = (torch.tanh(x[:, 5:8]) @ law["w"] + law["cat_score"][cats[:, 2]]
              + (x[:, 0] * x[:, 6])[:, None] * law["v"] + law["off_score"][cats[:, 1]])
    return x, cats, y, scores.argmax(1)


def make_law(g: torch.Generator) -> dict:
    law = {
        "slope": 1.5 * torch.randn(CARDS[0], generator=g),
        "offset": torch.randn(CARDS[1], generator=g),
        "w": 1.5 * torch.randn(3, CLASSES, generator=g),
        "cat_score": torch.randn(CARDS[2], CLASSES, generator=g),
        "off_score": 0.7 * torch.randn(CARDS[1], CLASSES, generator=g),
        "v": torch.randn(CLASSES, generator=g),
        "y_mean": 0.0, "y_std": 1.0,
    }
    probe = torch.Generator().manual_seed(12345)
    _, _, y, _ = make_table(4096, probe, law)
    law["y_mean"], law["y_std"] = y.mean().item(), y.std().item()
    return law


class FeatureTokenizer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        bound = DIM ** -0.5
        self.num_weight = nn.Parameter(torch.empty(N_NUM, DIM).uniform_(-bound, bound))
        self.num_bias = nn.Parameter(torch.empty(N_NUM, DIM).uniform_(-bound, bound))
        self.cat_embeddings = nn.Embedding(sum(CARDS), DIM)
        nn.init.uniform_(self.cat_embeddings.weight, -bound, bound)
        self.cat_bias = nn.Parameter(torch.empty(len(CARDS), DIM).uniform_(-bound, bound))
        offsets = torch.tensor((0, *CARDS[:-1])).cumsum(0)
        self.register_buffer("cat_offsets", offsets, persistent=False)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        num = x_num[:, :, None] * self.num_weight + self.num_bias
        cat = self.cat_embeddings(x_cat + self.cat_offsets) + self.cat_bias
        return torch.cat([num, cat], dim=1)


class CLSToken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(DIM).uniform_(-DIM ** -0.5, DIM ** -0.5))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens, self.weight.expand(tokens.size(0), 1, -1)], dim=1)


class ReGLU(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear_first = nn.Linear(DIM, 2 * hidden)
        self.linear_second = nn.Linear(hidden, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.linear_first(x).chunk(2, dim=-1)
        return self.linear_second(a * F.relu(b))


class Block(nn.Module):
    def __init__(self, first: bool) -> None:
        super().__init__()
        self.attention_norm = nn.Identity() if first else nn.LayerNorm(DIM)
        self.attention = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.ffn_norm = nn.LayerNorm(DIM)
        self.ffn = ReGLU(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.ffn_norm(x))


class FTTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = FeatureTokenizer()
        self.cls_token = CLSToken()
        self.blocks = nn.ModuleList(Block(first=i == 0) for i in range(DEPTH))
        self.final_norm = nn.LayerNorm(DIM)
        self.regression_head = nn.Linear(DIM, 1)
        self.classification_head = nn.Linear(DIM, CLASSES)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor):
        x = self.cls_token(self.tokenizer(x_num, x_cat))
        for block in self.blocks:
            x = block(x)
        cls = F.relu(self.final_norm(x[:, -1]))
        return self.regression_head(cls).squeeze(-1), self.classification_head(cls)


def multitask_loss(outputs, y, label) -> torch.Tensor:
    pred, logits = outputs
    return F.mse_loss(pred, y) + CLS_WEIGHT * F.cross_entropy(logits, label)


def as_json_number(x: float):
    return x if math.isfinite(x) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    law = make_law(g)
    train = make_table(N_TRAIN, g, law)
    val = make_table(N_VAL, g, law)

    model = FTTransformer()
    tokenizer_params = list(model.tokenizer.parameters()) + list(model.cls_token.parameters())
    tokenizer_ids = {id(p) for p in tokenizer_params}
    optimizer = torch.optim.Adam([
        {"params": [p for p in model.parameters() if id(p) not in tokenizer_ids]},
        {"params": tokenizer_params, "lr": TOKENIZER_LR},
    ], lr=LR)

    losses = []
    first_loss = None
    step = 0
    model.train()
    while step < args.steps:
        order = torch.randperm(N_TRAIN, generator=g)
        micro_batches = [order[i:i + MICRO_BATCH]
                         for i in range(0, N_TRAIN - MICRO_BATCH + 1, MICRO_BATCH)]
        for i in range(0, len(micro_batches) - ACCUM + 1, ACCUM):
            if step == args.steps:
                break
            optimizer.zero_grad()
            step_loss = 0.0
            for idx in micro_batches[i:i + ACCUM]:
                x_num, x_cat, y, label = (t[idx] for t in train)
                loss = multitask_loss(model(x_num, x_cat), y, label)
                if first_loss is None:
                    first_loss = loss.item()
                (loss / ACCUM).backward()
                step_loss += loss.item() / ACCUM
            optimizer.step()
            losses.append(step_loss)
            if step % 25 == 0:
                print(f"step {step:4d} loss {step_loss:.4f}")
            step += 1

    model.eval()
    with torch.no_grad():
        x_num, x_cat, y, label = val
        pred, logits = model(x_num, x_cat)
        mse = F.mse_loss(pred, y).item()
        ce = F.cross_entropy(logits, label).item()
        acc = (logits.argmax(1) == label).float().mean().item()
    val_loss = mse + CLS_WEIGHT * ce
    print(f"val mse {mse:.4f} ce {ce:.4f} acc {acc:.3f} loss {val_loss:.4f}")
    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": as_json_number(first_loss),
        "train_loss": as_json_number(sum(losses[-tail:]) / tail),
        "val_loss": as_json_number(val_loss),
    }))


if __name__ == "__main__":
    main()
