"""Ends its own process with os._exit(--code) at step --exit-step, mid-training (a script that
skips interpreter shutdown). --workers N: the batches come from a DataLoader with N worker
processes (forked children, which end with os._exit themselves). --in-thread: os._exit is called
from another thread, which the main thread waits for."""

import os
import threading

import torch
from common import parse
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def leave(step: int, code: int) -> None:
    print(f"step {step}: leaving with os._exit({code})", flush=True)
    os._exit(code)


def main() -> None:
    args = parse({"--exit-step": {"type": int, "default": 4},
                  "--code": {"type": int, "default": 0},
                  "--workers": {"type": int, "default": 0},
                  "--in-thread": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    x = torch.randn(64, 4)
    loader = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4,
                        num_workers=args.workers)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step, (xb, yb) in enumerate(loader, start=1):
        loss = nn.functional.mse_loss(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == args.exit_step:
            if args.in_thread:
                thread = threading.Thread(target=leave, args=(step, args.code))
                thread.start()
                thread.join()
            else:
                leave(step, args.code)
        if step == args.steps:
            break


if __name__ == "__main__":
    main()
