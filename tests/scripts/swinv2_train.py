"""transformers Swin V2 image classifier from a small config (random init): cosine attention with
a per-head logit scale set to log 10, a continuous position bias, shifted windows masked by -100,
and windows of 16 tokens in a batch of 16 images (the tokens axis has the batch's size)."""

import torch
import torch.nn.functional as F
from common import parse, save
from transformers import Swinv2Config, Swinv2ForImageClassification


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    config = Swinv2Config(image_size=32, patch_size=4, num_channels=3, embed_dim=32,
                          depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=4)
    model = Swinv2ForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(64, 3, 32, 32)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    losses = []
    for _ in range(args.steps):
        i = torch.randint(0, 64, (16,))
        loss = F.cross_entropy(model(pixel_values=x[i]).logits, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
