"""DistributedDataParallel on gloo (CPU), run under torchrun with 2 processes.

Each rank trains the same tiny model on its own batches; DDP averages the gradients in backward.
--nan-rank R: from --bad-step on, module `temp` of rank R divides by 0 (its output turns
  non-finite on that rank only; DDP's gradient all-reduce then spreads the NaN to every rank).
--crash-rank R: rank R (-1: every rank) raises ValueError at --bad-step, before its forward.
--linger S: rank 0 spends S seconds in a finally block after its training, crashed or not (a slow
  checkpoint save).
--destroy: destroy the process group when training is done (as many scripts do).
--fsdp: shard the model with FSDP2's fully_shard instead of DDP (it runs on CPU, FSDP1 does not).
--exit-code N: end with os._exit(N) after training, skipping interpreter shutdown.
"""

import os
import time

import torch
import torch.distributed as dist
from common import parse, save
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class Temperature(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.t = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.t


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.temp = Temperature()
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.temp(self.fc1(x))))


def wrap(model: nn.Module, fsdp: bool) -> nn.Module:
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        return fully_shard(model)
    return DistributedDataParallel(model)


def main() -> None:
    args = parse({"--nan-rank": {"type": int, "default": None},
                  "--bad-step": {"type": int, "default": 3},
                  "--crash-rank": {"type": int, "default": None},
                  "--linger": {"type": float, "default": 0.0},
                  "--destroy": {"action": "store_true"},
                  "--fsdp": {"action": "store_true"},
                  "--exit-code": {"type": int, "default": None}})
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    net = Net()
    model = wrap(net, args.fsdp)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(args.seed + 1 + rank)  # each rank its own batches
    losses = []
    try:
        for step in range(1, args.steps + 1):
            if rank == args.nan_rank and step >= args.bad_step:
                net.temp.t = 0.0
            if args.crash_rank in (rank, -1) and step == args.bad_step:
                raise ValueError(f"corrupt shard on rank {rank}")
            x = torch.randn(8, 4, generator=data)
            loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        if rank == 0:
            time.sleep(args.linger)
    if rank == 0:
        save(args.out, losses, net)
    if args.destroy:
        dist.destroy_process_group()
    if args.exit_code is not None:
        os._exit(args.exit_code)


if __name__ == "__main__":
    main()
