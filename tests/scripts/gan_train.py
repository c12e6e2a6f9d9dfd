"""A GAN: a discriminator and a generator, each with its own Adam, stepping in turn every
iteration on their own losses (the discriminator's falls, the generator's rises as it loses)."""

import torch
from common import parse, save
from torch import nn


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    gen = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    disc = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-3, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    losses: list[float] = []
    d_losses: list[float] = []
    g_losses: list[float] = []
    for _ in range(args.steps):
        real = torch.randn(32, 2) * 0.5 + 2.0
        fake = gen(torch.randn(32, 2))
        d_loss = bce(disc(real), torch.ones(32, 1)) + bce(disc(fake.detach()), torch.zeros(32, 1))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = bce(disc(fake), torch.ones(32, 1))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        d_losses.append(d_loss.item())
        g_losses.append(g_loss.item())
        losses.append(d_losses[-1] + g_losses[-1])
    save(args.out, losses, gen, disc, d_losses=d_losses, g_losses=g_losses)


if __name__ == "__main__":
    main()
