"""The architecture sweep's task and model, trained with any of torch's optimizers.

    python program.py --model biogpt --optimizer adadelta --lr 1.0 --seed 0 --steps 100

A corpus program (see ../README.md, "The program contract") for the optimizer sweep: the model and
data are the architecture sweep's (``../architectures/program.py``: a transformers sequence
classifier from a tiny config on a synthetic topic task); what changes is the optimizer, so the
sweep measures hfault on optimizer code nobody on the project wrote. Every optimizer gets the
same recipe around it: a decay / no-decay split where the optimizer takes ``weight_decay``,
linear warmup and decay (``LambdaLR``), gradient clipping, ``F.cross_entropy`` on the logits.
Two recipes differ as their users would write them: L-BFGS steps through a closure (which
re-evaluates the loss) at a constant learning rate, and Muon updates the hidden weight matrices
while AdamW updates the embeddings, the head and every vector (Muon takes 2-D parameters only).
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent


def _architectures():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "arch_program_for_optimizers", HERE.parent / "architectures" / "program.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


arch = _architectures()
Groups = list[dict[str, Any]]


def _groups(model: nn.Module, decay: float) -> Groups:
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": matrices, "weight_decay": decay}, {"params": vectors, "weight_decay": 0.0}]


# name -> (build(model, lr) -> optimizers, the learning rates generate.py tries)
OPTIMIZERS: dict[str, tuple[Callable[[nn.Module, float], list[torch.optim.Optimizer]],
                            tuple[float, ...]]] = {
    "sgd": (lambda m, lr: [torch.optim.SGD(_groups(m, 0.0), lr=lr)], (0.1, 0.3, 1.0)),
    "sgd_momentum": (lambda m, lr: [torch.optim.SGD(_groups(m, 1e-4), lr=lr, momentum=0.9)],
                     (0.01, 0.03, 0.1)),
    "sgd_nesterov": (lambda m, lr: [torch.optim.SGD(_groups(m, 1e-4), lr=lr, momentum=0.9,
                                                    nesterov=True)], (0.01, 0.03, 0.1)),
    "adam": (lambda m, lr: [torch.optim.Adam(m.parameters(), lr=lr)], (3e-4, 1e-3, 3e-3)),
    "adam_amsgrad": (lambda m, lr: [torch.optim.Adam(m.parameters(), lr=lr, amsgrad=True)],
                     (3e-4, 1e-3, 3e-3)),
    "adamax": (lambda m, lr: [torch.optim.Adamax(_groups(m, 0.0), lr=lr)], (1e-3, 3e-3, 1e-2)),
    "nadam": (lambda m, lr: [torch.optim.NAdam(_groups(m, 0.01), lr=lr,
                                               decoupled_weight_decay=True)], (3e-4, 1e-3, 3e-3)),
    "radam": (lambda m, lr: [torch.optim.RAdam(_groups(m, 0.0), lr=lr)], (1e-3, 3e-3, 1e-2)),
    "adagrad": (lambda m, lr: [torch.optim.Adagrad(m.parameters(), lr=lr)], (0.01, 0.03, 0.1)),
    "adadelta": (lambda m, lr: [torch.optim.Adadelta(m.parameters(), lr=lr)], (0.3, 1.0, 3.0)),
    "rmsprop": (lambda m, lr: [torch.optim.RMSprop(m.parameters(), lr=lr)], (1e-4, 3e-4, 1e-3)),
    "rmsprop_momentum": (lambda m, lr: [torch.optim.RMSprop(m.parameters(), lr=lr, momentum=0.9,
                                                            centered=True)], (3e-5, 1e-4, 3e-4)),
    "asgd": (lambda m, lr: [torch.optim.ASGD(m.parameters(), lr=lr, t0=50)], (0.1, 0.3, 1.0)),
    "rprop": (lambda m, lr: [torch.optim.Rprop(m.parameters(), lr=lr)], (1e-4, 3e-4, 1e-3)),
    "adafactor": (lambda m, lr: [torch.optim.Adafactor(_groups(m, 0.0), lr=lr)],
                  (3e-3, 1e-2, 3e-2)),
    "lbfgs": (lambda m, lr: [torch.optim.LBFGS(m.parameters(), lr=lr, max_iter=1,
                                               history_size=10)], (0.03, 0.1, 0.3)),
    "muon": (lambda m, lr: _muon(m, lr), (0.01, 0.03, 0.1)),
}


def _muon(model: nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    """Muon on the hidden weight matrices, AdamW (1e-3) on embeddings, the head and vectors."""
    outer = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
             for p in m.parameters(recurse=False)}
    outer |= {id(p) for name, p in model.named_parameters()
              if p.ndim >= 2 and p.shape[0] == arch.CLASSES}
    hidden = [p for p in model.parameters() if p.ndim == 2 and id(p) not in outer]
    rest = [p for p in model.parameters() if p.ndim != 2 or id(p) in outer]
    return [torch.optim.Muon(hidden, lr=lr, weight_decay=0.01),
            torch.optim.AdamW(rest, lr=1e-3, weight_decay=0.0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a transformers model type, e.g. biogpt")
    p.add_argument("--optimizer", required=True, choices=sorted(OPTIMIZERS))
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    model = arch.AutoModelForSequenceClassification.from_config(arch.tiny_config(args.model))
    optimizers = OPTIMIZERS[args.optimizer][0](model, args.lr)
    warmup = 1 if args.optimizer == "lbfgs" else max(1, args.steps // 10)

    def factor(step: int) -> float:
        if args.optimizer == "lbfgs":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (args.steps - step) / max(1, args.steps - warmup))

    schedules = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]
    data = torch.Generator().manual_seed(1000 + args.seed)
    val = arch.make_batch(256, torch.Generator().manual_seed(99))

    first, tail = None, []
    model.train()
    for step in range(args.steps):
        batch = arch.make_batch(args.batch_size, data)

        def closure(batch: tuple[torch.Tensor, ...] = batch) -> torch.Tensor:
            ids, mask, labels = batch
            for o in optimizers:
                o.zero_grad()
            loss = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            return loss

        if args.optimizer == "lbfgs":
            loss = optimizers[0].step(closure)
        else:
            loss = closure()
            for o in optimizers:
                o.step()
        for s in schedules:
            s.step()
        value = float(loss.item())
        first = value if first is None else first
        if step >= args.steps - max(1, args.steps // 10):
            tail.append(value)
        if step % 25 == 0:
            print(f"step {step:4d} loss {value:.4f}", flush=True)

    arch.print_result(model, val, first, tail)


if __name__ == "__main__":
    main()
