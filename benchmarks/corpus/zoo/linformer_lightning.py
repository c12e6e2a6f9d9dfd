"""Linformer encoder classifier on long synthetic sequences, trained with PyTorch Lightning.

Model (Wang et al. 2020, written out here): token + learned position embeddings, two post-LN
encoder layers whose self-attention projects keys and values **along the sequence axis** from
n = 128 positions to k = 16 with learned ``nn.Linear(seq_len, k)`` maps E and F (one pair per
layer, shared by its heads), softmax over the k compressed positions (``Tensor.softmax``), a
GELU feed-forward, then mean pooling over the sequence and a linear classifier.

Task ("selected group's colour"): 128 tokens, each either a colour token of group A or of group
B (4 colours each; each group has a dominant colour, about 60% of its tokens) or, at 15% of the
positions, a selector vote naming group A or B (80% of the votes name the selected group). The
label is the dominant colour of the selected group: every token has to learn from the whole
sequence which group counts before the pooled features can answer, which a bag of tokens
followed by a linear read-out cannot do.

Training: a ``lightning.LightningModule`` whose ``training_step`` returns
``F.cross_entropy`` on the logits; ``configure_optimizers`` returns Adam (weight decay 1e-4)
and a per-step LambdaLR schedule (linear warmup, cosine decay) in a scheduler dict;
``L.Trainer(max_steps=--steps, gradient_clip_val=1.0, deterministic=True)`` on the CPU. The
validation loss is computed by hand after ``fit``.
"""

import argparse
import json
import logging
import math
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SEQ_LEN = 128
COLOURS = 4
SELECTORS = 2  # tokens 0, 1: which group counts
GROUP_A = SELECTORS  # tokens 2..5: colours of group A
GROUP_B = SELECTORS + COLOURS  # tokens 6..9: colours of group B
VOCAB = SELECTORS + 2 * COLOURS
DOMINANCE = 0.5
SELECTOR_RATE = 0.15  # share of positions holding a selector vote
SELECTOR_AGREEMENT = 0.8  # share of the votes naming the selected group

DEFAULTS = {
    "dim": 32, "heads": 4, "layers": 2, "k": 16, "ffn": 64,
    "lr": 4e-3, "beta1": 0.9, "weight_decay": 1e-4, "warmup": 20,
    "batch_size": 32, "max_steps": 160, "clip": 1.0,
}


def selector_data(n, generator):
    """(tokens (n, 128), labels (n,)): selector tokens scattered over the sequence vote for a
    group; the label is the dominant colour of that group's tokens."""
    dominant = torch.randint(0, COLOURS, (n, 2), generator=generator)
    group = torch.randint(0, 2, (n, SEQ_LEN), generator=generator)
    noise = torch.randint(0, COLOURS, (n, SEQ_LEN), generator=generator)
    use_dominant = torch.rand(n, SEQ_LEN, generator=generator) < DOMINANCE
    colour = torch.where(use_dominant, dominant.gather(1, group), noise)
    tokens = torch.where(group == 0, GROUP_A + colour, GROUP_B + colour)
    selector = torch.randint(0, SELECTORS, (n,), generator=generator)
    votes = torch.where(torch.rand(n, SEQ_LEN, generator=generator) < SELECTOR_AGREEMENT,
                        selector[:, None], 1 - selector[:, None])
    is_vote = torch.rand(n, SEQ_LEN, generator=generator) < SELECTOR_RATE
    tokens = torch.where(is_vote, votes, tokens)
    labels = dominant.gather(1, selector[:, None]).squeeze(1)
    return tokens, labels


class LinformerSelfAttention(nn.Module):
    def __init__(self, dim, heads, seq_len, k):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.E = nn.Linear(seq_len, k, bias=False)  # keys: n positions -> k
        self.F = nn.Linear(seq_len, k, bias=False)  # values: n positions -> k
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q = self.query(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        keys = self.E(self.key(x).transpose(1, 2)).transpose(1, 2)  # (b, k, d)
        values = self.F(self.value(x).transpose(1, 2)).transpose(1, 2)
        k_len = keys.shape[1]
        keys = keys.view(b, k_len, self.heads, self.head_dim).transpose(1, 2)
        values = values.view(b, k_len, self.heads, self.head_dim).transpose(1, 2)
        scores = q @ keys.transpose(-2, -1) / math.sqrt(self.head_dim)
        attn = scores.softmax(dim=-1)
        ctx = (attn @ values).transpose(1, 2).reshape(b, n, d)
        return self.out(ctx)


class LinformerLayer(nn.Module):
    """Post-LN: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, dim, heads, seq_len, k, ffn):
        super().__init__()
        self.attn = LinformerSelfAttention(dim, heads, seq_len, k)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ffn(x))


class LinformerClassifier(L.LightningModule):
    def __init__(self, dim, heads, layers, k, ffn, lr, beta1, weight_decay, warmup,
                 total_steps):
        super().__init__()
        self.save_hyperparameters()
        self.tok_emb = nn.Embedding(VOCAB, dim)
        self.pos_emb = nn.Embedding(SEQ_LEN, dim)
        self.layers = nn.ModuleList(
            [LinformerLayer(dim, heads, SEQ_LEN, k, ffn) for _ in range(layers)])
        self.head = nn.Linear(dim, COLOURS)
        self.train_losses = []

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)[None]
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(dim=1))

    def training_step(self, batch, batch_idx):
        tokens, labels = batch
        loss = F.cross_entropy(self(tokens), labels)
        self.train_losses.append(loss.item())
        if self.global_step % 25 == 0:
            print(f"step {self.global_step:4d}  loss {loss.item():.4f}")
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, betas=(hp.beta1, 0.98),
                                     weight_decay=hp.weight_decay)

        def warmup_cosine(step):
            if step < hp.warmup:
                return (step + 1) / hp.warmup
            t = min(1.0, (step - hp.warmup) / max(1, hp.total_steps - hp.warmup))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def jsonable(x):
    return x if math.isfinite(x) else "nan"


def main():
    parser = argparse.ArgumentParser(description="Linformer + Lightning selected-group colour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULTS["max_steps"])
    args = parser.parse_args()

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    L.seed_everything(args.seed, verbose=False)

    gen = torch.Generator().manual_seed(9000 + args.seed)
    train = TensorDataset(*selector_data(args.steps * DEFAULTS["batch_size"], gen))
    val_tokens, val_labels = selector_data(512, gen)
    loader = DataLoader(train, batch_size=DEFAULTS["batch_size"], shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))

    hp = {k: DEFAULTS[k] for k in ("dim", "heads", "layers", "k", "ffn", "lr", "beta1",
                                   "weight_decay", "warmup")}
    model = LinformerClassifier(**hp, total_steps=args.steps)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=args.steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        deterministic=True, gradient_clip_val=DEFAULTS["clip"], num_sanity_val_steps=0,
    )
    trainer.fit(model, train_dataloaders=loader)

    model.eval()
    with torch.no_grad():
        logits = model(val_tokens)
        val_loss = F.cross_entropy(logits, val_labels).item()
        accuracy = (logits.argmax(-1) == val_labels).float().mean().item()
    print(f"val loss {val_loss:.4f}  accuracy {accuracy:.3f}")

    losses = model.train_losses
    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": jsonable(losses[0]),
        "train_loss": jsonable(sum(losses[-tail:]) / tail),
        "val_loss": jsonable(val_loss),
    }))


if __name__ == "__main__":
    main()
