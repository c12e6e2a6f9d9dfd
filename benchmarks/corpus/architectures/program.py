"""Fine-tune any transformers sequence classifier, built from a tiny config, on a synthetic task.

    python program.py --model gpt_neox --seed 0 --steps 100

A corpus program (see ../README.md, "The program contract") whose model is chosen by name among
transformers' ``AutoModelForSequenceClassification`` types: the architecture sweep runs the same
recipe over model code nobody on the project wrote. The config is each type's defaults with the
sizes shrunk (every size attribute the type's config has is set; the rest keep their defaults)
and dropout switched off.

Task: each sequence (BOS, tokens, EOS, right padding) draws its tokens from one of ``CLASSES``
topic ranges, half of them replaced by noise tokens; the label is the topic. The classifier reads
one position (the first token, or the last real one in a decoder), so attention must gather the
evidence. The usual fine-tuning recipe: AdamW with a decay / no-decay split, linear warmup and
decay, gradient clipping, the loss computed with ``F.cross_entropy`` on the logits.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()

PAD, BOS, EOS = 0, 1, 2
FIRST_WORD = 3
CLASSES = 5
TOPIC_WORDS = 24
VOCAB = FIRST_WORD + CLASSES * TOPIC_WORDS + 40
MAX_LEN = 24
WIDTH, FFN, HEADS, LAYERS = 64, 128, 4, 2

# Every size a config may spell, under each spelling; only those the type's config has are set.
SIZES = {
    "hidden_size": WIDTH, "d_model": WIDTH, "n_embd": WIDTH, "dim": WIDTH, "embed_dim": WIDTH,
    "embedding_size": WIDTH, "word_embed_proj_dim": WIDTH,
    "num_hidden_layers": LAYERS, "n_layer": LAYERS, "n_layers": LAYERS, "num_layers": LAYERS,
    "encoder_layers": LAYERS, "decoder_layers": LAYERS, "num_decoder_layers": LAYERS,
    "num_attention_heads": HEADS, "n_head": HEADS, "n_heads": HEADS, "num_heads": HEADS,
    "encoder_attention_heads": HEADS, "decoder_attention_heads": HEADS,
    "num_key_value_heads": HEADS // 2, "multi_query_group_num": HEADS // 2,
    "intermediate_size": FFN, "d_ff": FFN, "encoder_ffn_dim": FFN, "decoder_ffn_dim": FFN,
    "ffn_dim": FFN, "n_inner": FFN, "hidden_dim": FFN,
    "head_dim": WIDTH // HEADS, "d_kv": WIDTH // HEADS,
    "vocab_size": VOCAB, "max_position_embeddings": 128, "n_positions": 128, "n_ctx": 128,
    "max_seq_len": 128, "num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2,
    "moe_intermediate_size": FFN // 2, "shared_expert_intermediate_size": FFN // 2,
}
DROPOUTS = (
    "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
    "activation_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout",
    "classifier_dropout", "summary_first_dropout", "dropout_rate", "embed_dropout",
    "ffn_dropout", "resid_dropout", "emb_pdrop", "classifier_dropout_prob",
)


def tiny_config(model_type: str):
    defaults = AutoConfig.for_model(model_type)
    sizes = {k: v for k, v in SIZES.items() if hasattr(defaults, k)}
    sizes.update({k: 0.0 for k in DROPOUTS if isinstance(getattr(defaults, k, None), float)})
    return AutoConfig.for_model(
        model_type, **sizes, num_labels=CLASSES, pad_token_id=PAD, bos_token_id=BOS,
        eos_token_id=EOS, decoder_start_token_id=EOS, tie_word_embeddings=False)


def make_batch(n: int, generator: torch.Generator):
    """input_ids, attention_mask and labels: BOS, topic or noise tokens, EOS, padding."""
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    lengths = torch.randint(MAX_LEN // 2, MAX_LEN - 1, (n,), generator=generator)
    topic = FIRST_WORD + labels[:, None] * TOPIC_WORDS + torch.randint(
        0, TOPIC_WORDS, (n, MAX_LEN), generator=generator)
    noise = torch.randint(FIRST_WORD, VOCAB, (n, MAX_LEN), generator=generator)
    words = torch.where(torch.rand(n, MAX_LEN, generator=generator) < 0.5, noise, topic)
    position = torch.arange(MAX_LEN)[None]
    ids = torch.where(position <= lengths[:, None], words, torch.full_like(words, PAD))
    ids[:, 0] = BOS
    ids[torch.arange(n), lengths + 1] = EOS
    mask = (position <= lengths[:, None] + 1).long()
    return ids, mask, labels


def print_result(model: torch.nn.Module, val: tuple[torch.Tensor, ...], first: float | None,
                 tail: list[float]) -> None:
    """The contract's last line: the first loss, the mean of the last tenth, the val loss."""
    model.eval()
    with torch.no_grad():
        ids, mask, labels = val
        val_loss = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels).item()

    def finite(x: float | None):  # type: ignore[no-untyped-def]
        return x if x is not None and math.isfinite(x) else "nan"

    result = {"first_loss": finite(first), "train_loss": finite(sum(tail) / len(tail)),
              "val_loss": finite(val_loss)}
    print("CORPUS_RESULT " + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a transformers model type, e.g. gpt_neox")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(args.model))
    decay = [q for q in model.parameters() if q.ndim >= 2]
    no_decay = [q for q in model.parameters() if q.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    sched = get_linear_schedule_with_warmup(opt, max(1, args.steps // 10), args.steps)
    data = torch.Generator().manual_seed(1000 + args.seed)
    val = make_batch(256, torch.Generator().manual_seed(99))

    first, tail = None, []
    model.train()
    for step in range(args.steps):
        ids, mask, labels = make_batch(args.batch_size, data)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        value = loss.item()
        first = value if first is None else first
        if step >= args.steps - max(1, args.steps // 10):
            tail.append(value)
        if step % 25 == 0:
            print(f"step {step:4d} loss {value:.4f}", flush=True)

    print_result(model, val, first, tail)


if __name__ == "__main__":
    main()
