"""A tiny BLOOM language model learning digit facts, trained by transformers' ``Trainer``.

``BloomForCausalLM`` from a small ``BloomConfig`` (random init, nothing downloaded): ALiBi
position biases instead of position embeddings, a fused ``query_key_value`` projection, a
LayerNorm right after the word embeddings, tied input/output embeddings.

Data: character strings over ``^0123456789:;``: ``^`` then five facts ``ab:sdp;`` about two
random digits a, b in 0-4: their sum s, absolute difference d and the last digit of their
product p (so ``34:712;`` or ``20:220;``). The operands are random; the layout and the three
results are not, and the results need attention back to both operands. The model learns the
layout first, then the results. The dataset returns ``input_ids`` and ``labels`` (the same
ids: the model shifts them itself).

Recipe: ``Trainer`` with its own AdamW, cosine schedule with warmup, gradient clipping,
``max_steps`` from ``--steps``, no logging, no saving. The per-step loss is recorded by a small
``Trainer`` subclass; the validation loss is ``trainer.evaluate()`` on held-out strings.
"""

import argparse
import json
import math
import random
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import BloomConfig, BloomForCausalLM, Trainer, TrainingArguments
from transformers import logging as hf_logging

hf_logging.set_verbosity_error()

ALPHABET = "^0123456789:;"
STOI = {ch: i for i, ch in enumerate(ALPHABET)}
N_FACTS = 5  # "ab:sdp;" examples per string


def fact_string(rng: random.Random) -> str:
    parts = ["^"]
    for _ in range(N_FACTS):
        a, b = rng.randrange(5), rng.randrange(5)
        parts.append(f"{a}{b}:{a + b}{abs(a - b)}{a * b % 10};")
    return "".join(parts)


class FactStrings(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        texts = [fact_string(rng) for _ in range(n)]
        self.ids = torch.tensor([[STOI[c] for c in t] for t in texts], dtype=torch.long)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i]
        return {"input_ids": ids, "labels": ids.clone()}


class LossRecordingTrainer(Trainer):
    """Keeps the loss of every training batch (Trainer's own logging is off)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch_losses: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            loss = result[0] if return_outputs else result
            self.batch_losses.append(loss.detach().float().item())
        return result


def build_model() -> BloomForCausalLM:
    config = BloomConfig(
        vocab_size=len(ALPHABET),
        hidden_size=64,
        n_layer=2,
        n_head=4,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        apply_residual_connection_post_layernorm=False,
        bos_token_id=STOI["^"],
        eos_token_id=STOI["^"],
        pad_token_id=None,
        tie_word_embeddings=True,
        use_cache=False,
    )
    return BloomForCausalLM(config)


def as_number(x: float) -> float | str:
    return x if math.isfinite(x) else "nan"


def main() -> None:
    parser = argparse.ArgumentParser(description="tiny BLOOM on digit facts via Trainer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=160)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train_set = FactStrings(4096, seed=10_000 + args.seed)
    eval_set = FactStrings(256, seed=20_000 + args.seed)
    model = build_model()

    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch,
            max_steps=args.steps,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=128,
            learning_rate=3e-3,
            weight_decay=0.01,
            adam_beta2=0.98,
            lr_scheduler_type="cosine",
            warmup_steps=15,
            max_grad_norm=1.0,
            report_to=[],
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            dataloader_num_workers=0,
            use_cpu=True,
            disable_tqdm=True,
            seed=args.seed,
            data_seed=args.seed,
        )
        trainer = LossRecordingTrainer(
            model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set
        )
        trainer.train()
        losses = trainer.batch_losses
        for step in range(0, len(losses), 20):
            print(f"step {step:4d}  loss {losses[step]:.4f}")
        metrics = trainer.evaluate()
    val_loss = float(metrics["eval_loss"])
    print(f"held-out loss {val_loss:.4f}")

    tail = losses[-max(1, len(losses) // 10) :]
    print(
        "CORPUS_RESULT "
        + json.dumps(
            {
                "first_loss": as_number(losses[0]),
                "train_loss": as_number(sum(tail) / len(tail)),
                "val_loss": as_number(val_loss),
            }
        )
    )


if __name__ == "__main__":
    main()
