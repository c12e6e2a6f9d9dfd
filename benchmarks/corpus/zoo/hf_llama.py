"""Tiny Llama (RMSNorm, RoPE, grouped-query attention) trained on "Fibonacci mod P" sequences.

Each sequence starts with two random residues and continues with x[t] = x[t-1] + x[t-2] (mod P),
so everything after the first two tokens is determined by the two tokens just before it. The
script computes its own next-token loss from the shifted logits; plain Adam, constant LR.
Validation scores held-out sequences the way the model is used at inference: one token at a
time through the KV cache.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers import logging as hf_logging

hf_logging.set_verbosity_error()

MODULUS = 16
SEQ_LEN = 20
BATCH = 48
LR = 2e-3
N_VAL = 128


def fibonacci_batch(n: int, g: torch.Generator) -> torch.Tensor:
    seq = torch.empty(n, SEQ_LEN, dtype=torch.long)
    seq[:, :2] = torch.randint(0, MODULUS, (n, 2), generator=g)
    for t in range(2, SEQ_LEN):
        seq[:, t] = (seq[:, t - 1] + seq[:, t - 2]) % MODULUS
    return seq


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))
    shift_labels = tokens[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels)


@torch.no_grad()
def incremental_loss(model: LlamaForCausalLM, tokens: torch.Tensor) -> float:
    """Same loss as training, but computed step by step with the KV cache (as in generation)."""
    past = None
    step_logits = []
    for t in range(tokens.size(1)):
        out = model(input_ids=tokens[:, t:t + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        step_logits.append(out.logits)
    return next_token_loss(torch.cat(step_logits, dim=1), tokens).item()


def build_model() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=MODULUS,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ_LEN,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def as_json_number(x: float):
    return x if math.isfinite(x) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    val_tokens = fibonacci_batch(N_VAL, g)

    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    train_losses = []
    model.train()
    step = 0
    while step < args.steps:
        tokens = fibonacci_batch(BATCH, g)
        logits = model(input_ids=tokens).logits
        loss = next_token_loss(logits, tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_losses.append(loss.item())
        if step % 25 == 0:
            print(f"step={step} loss={train_losses[-1]:.4f}")
        step += 1

    model.eval()
    val_loss = incremental_loss(model, val_tokens)
    print(f"val_loss={val_loss:.4f}")

    n_tail = max(1, len(train_losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": as_json_number(train_losses[0]),
        "train_loss": as_json_number(sum(train_losses[-n_tail:]) / n_tail),
        "val_loss": as_json_number(val_loss),
    }))


if __name__ == "__main__":
    main()
