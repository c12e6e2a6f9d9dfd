"""Train a tiny GPT-2 from scratch on modular arithmetic progressions.

Every sequence is ``a, a+d, a+2d, ...  (mod VOCAB)`` with a random start ``a`` and a random step
``d``: after two tokens the rest is predictable, so a causal LM that looks back (and only back)
drives its loss far below ``log(VOCAB)``. AdamW, cosine schedule with warmup, gradient clipping,
bfloat16 autocast around the forward pass.
"""

import argparse
import json
import math

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_schedule_with_warmup

transformers.logging.set_verbosity_error()

VOCAB = 32
SEQ_LEN = 24
MAX_STEP = 5

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=120)
parser.add_argument("--bs", type=int, default=32)
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--no-amp", action="store_true", help="train in float32")
args = parser.parse_args()

torch.manual_seed(args.seed)
rng = torch.Generator().manual_seed(7919 * (args.seed + 1))


def progressions(batch_size):
    start = torch.randint(0, VOCAB, (batch_size, 1), generator=rng)
    step = torch.randint(1, MAX_STEP + 1, (batch_size, 1), generator=rng)
    return (start + step * torch.arange(SEQ_LEN)) % VOCAB


cfg = GPT2Config(
    vocab_size=VOCAB,
    n_positions=SEQ_LEN,
    n_embd=64,
    n_layer=2,
    n_head=4,
    n_inner=128,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=0,
    eos_token_id=0,
    attn_implementation="sdpa",
)
model = GPT2LMHeadModel(cfg)

optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
sched = get_cosine_schedule_with_warmup(
    optim, num_warmup_steps=args.steps // 10, num_training_steps=args.steps
)
amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.no_amp)

val_batch = progressions(256)
losses = []
model.train()
for it in range(args.steps):
    batch = progressions(args.bs)
    with amp:
        loss = model(input_ids=batch, labels=batch).loss
    optim.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optim.step()
    sched.step()
    losses.append(loss.item())
    if it % 50 == 0 or it == args.steps - 1:
        print(f"it {it:4d} | loss {losses[-1]:.4f} | grad norm {float(gnorm):.3f}")

model.eval()
with torch.no_grad(), amp:
    val = float(model(input_ids=val_batch, labels=val_batch).loss)
print(f"validation loss {val:.4f} (uniform would be {math.log(VOCAB):.4f})")

k = max(1, args.steps // 10)
summary = {
    "first_loss": losses[0],
    "train_loss": sum(losses[-k:]) / k,
    "val_loss": val,
}
summary = {key: (v if math.isfinite(v) else "nan") for key, v in summary.items()}
print("CORPUS_RESULT " + json.dumps(summary))
