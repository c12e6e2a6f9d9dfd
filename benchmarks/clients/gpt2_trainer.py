"""A tiny GPT-2 (``GPT2Config``) trained by the transformers ``Trainer`` on synthetic sequences.

Written for ``benchmarks/clients.py`` the way a user would: nothing hfault-specific. The data are
arithmetic progressions modulo the vocabulary, so the loss falls within a few dozen steps.
``--lr-scale S --lr-layer NAME`` puts one module's parameters into their own AdamW param group
with S times the learning rate (the injected bug: a wrong per-module learning rate); the optimizer
is then the script's own, passed to the ``Trainer``, which adds its default linear schedule.

    python gpt2_trainer.py --max-steps 120 --out out
"""

import argparse

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


class Progressions(Dataset):
    """Sequences ``a, a+d, a+2d, ...`` mod the vocabulary (random start ``a`` and step ``d`` in
    1..7); labels are the inputs. Learnable in a few dozen steps: from two tokens on, the next is
    determined."""

    def __init__(self, n: int, length: int, vocab: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, vocab, (n, 1), generator=g)
        step = torch.randint(1, 8, (n, 1), generator=g)
        self.ids = (start + step * torch.arange(length)) % vocab

    def __len__(self) -> int:
        return self.ids.size(0)

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i]
        return {"input_ids": ids, "labels": ids.clone()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="out")
    parser.add_argument("--lr-scale", type=float, default=1.0)
    parser.add_argument("--lr-layer", default="transformer.h.1.attn.c_attn")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=64, n_embd=64, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)

    training = TrainingArguments(
        output_dir=args.out, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=5, weight_decay=0.01, logging_steps=20,
        save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, seed=0,
    )
    optimizers = (None, None)
    if args.lr_scale != 1.0:
        hot = [p for n, p in model.named_parameters() if n.startswith(args.lr_layer + ".")]
        rest = [p for n, p in model.named_parameters() if not n.startswith(args.lr_layer + ".")]
        optimizer = torch.optim.AdamW([{"params": rest},
                                       {"params": hot, "lr": args.lr * args.lr_scale}],
                                      lr=args.lr, weight_decay=0.01)
        optimizers = (optimizer, None)
    trainer = Trainer(model=model, args=training, optimizers=optimizers,
                      train_dataset=Progressions(4096, 32, config.vocab_size, seed=1))
    trainer.train()


if __name__ == "__main__":
    main()
