"""A tiny GPT-NeoX (Pythia-style) causal LM trained from scratch under bf16 autocast on the CPU.

transformers' ``GPTNeoXForCausalLM`` is built from a small ``GPTNeoXConfig`` with random weights:
fused ``query_key_value`` projection, rotary embeddings on a quarter of each head's dimensions,
parallel attention + MLP residual, eager attention. The model gets ``labels=`` and computes the
shifted next-token loss itself.

Data: every sequence is ``BOS, text, SEP, copy`` where ``text`` is 20 tokens from a sparse
first-order Markov chain (each symbol has three likely successors) and ``copy`` repeats the first
14 tokens of ``text``. The text is a prompt (its labels are -100); SEP and the copy are scored.
Copying needs a head that looks 21 positions back through the rotary positions; the model is
halfway through learning it at the default budget.

Recipe: fp32 master weights, the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
gradient accumulation over two micro-batches per optimizer step, ``torch.optim.Adam`` with an L2
``weight_decay`` on the matrices only (two param groups), linear warmup then a constant LR.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers import logging as hf_logging

hf_logging.set_verbosity_error()

N_SYM = 24
BOS, SEP = N_SYM, N_SYM + 1
VOCAB = N_SYM + 2
TEXT_LEN, COPY_LEN = 20, 14
SEQ_LEN = 1 + TEXT_LEN + 1 + COPY_LEN

MICRO_BATCH = 16
ACCUM = 2
LR = 2e-3
WARMUP = 20
WEIGHT_DECAY = 1e-4


class CopySource:
    """Markov text followed by a verbatim copy of its beginning; (input_ids, labels)."""

    def __init__(self, gen: torch.Generator) -> None:
        self.gen = gen
        successors = torch.rand(N_SYM, N_SYM, generator=gen).argsort(dim=1)[:, :3]
        weights = torch.tensor([0.6, 0.25, 0.15])
        self.transition = torch.zeros(N_SYM, N_SYM)
        self.transition.scatter_(1, successors, weights.expand(N_SYM, 3).clone())

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        text = torch.empty(n, TEXT_LEN, dtype=torch.long)
        text[:, 0] = torch.randint(0, N_SYM, (n,), generator=self.gen)
        for t in range(1, TEXT_LEN):
            probs = self.transition[text[:, t - 1]]
            text[:, t] = torch.multinomial(probs, 1, generator=self.gen).squeeze(1)
        bos = torch.full((n, 1), BOS, dtype=torch.long)
        sep = torch.full((n, 1), SEP, dtype=torch.long)
        ids = torch.cat([bos, text, sep, text[:, :COPY_LEN]], dim=1)
        labels = ids.clone()
        labels[:, : 1 + TEXT_LEN] = -100
        return ids, labels


def make_model() -> GPTNeoXForCausalLM:
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        hidden_act="gelu",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.25},
        max_position_embeddings=64,
        use_parallel_residual=True,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=SEP,
        pad_token_id=None,
        attn_implementation="eager",
    )
    return GPTNeoXForCausalLM(cfg)


def adam_groups(model: torch.nn.Module) -> list[dict]:
    matrices = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed_in" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed_in" not in n)]
    return [
        {"params": matrices, "weight_decay": WEIGHT_DECAY},
        {"params": rest, "weight_decay": 0.0},
    ]


def finite_or_nan(x: float) -> float | str:
    return x if math.isfinite(x) else "nan"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=110)
    opts = parser.parse_args()

    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(1000 + opts.seed)
    source = CopySource(gen)
    held_out = source.batch(128)

    model = make_model()
    optim = torch.optim.Adam(adam_groups(model), lr=LR, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / WARMUP))

    history: list[float] = []
    model.train()
    for step in range(opts.steps):
        optim.zero_grad()
        step_loss = 0.0
        for _ in range(ACCUM):
            ids, labels = source.batch(MICRO_BATCH)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(input_ids=ids, labels=labels)
            (out.loss / ACCUM).backward()
            step_loss += out.loss.item() / ACCUM
        optim.step()
        sched.step()
        history.append(step_loss)
        if step % 20 == 0 or step == opts.steps - 1:
            print(f"[{step:03d}] loss={step_loss:.4f} lr={sched.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        val = model(input_ids=held_out[0], labels=held_out[1]).loss.float().item()
    print(f"held-out loss {val:.4f}")

    n_tail = max(1, len(history) // 10)
    result = {
        "first_loss": finite_or_nan(history[0]),
        "train_loss": finite_or_nan(sum(history[-n_tail:]) / n_tail),
        "val_loss": finite_or_nan(val),
    }
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
