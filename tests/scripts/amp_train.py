"""bf16 autocast with torch.amp.GradScaler on CPU: the recorded loss must be the unscaled one."""

import torch
from common import parse, save
from torch import nn


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    losses = []
    for _ in range(args.steps):
        x = torch.randn(16, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
