"""transformers ESM for sequence classification, from a small config (random init): its model
holds a contact-prediction head that only ``predict_contacts`` calls, so a classification run
never reads it."""

import torch
from common import parse, save
from transformers import EsmConfig, EsmForSequenceClassification


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    config = EsmConfig(
        vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=2, pad_token_id=1,
        mask_token_id=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = EsmForSequenceClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    losses = []
    for _ in range(args.steps):
        ids = torch.randint(4, 33, (8, 12))
        labels = (ids[:, 1] > 18).long()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
