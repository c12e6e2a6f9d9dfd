"""Fine-tuning-style training of a transformers ALBERT sequence classifier on a topic task.

``AlbertForSequenceClassification`` from a small ``AlbertConfig`` (random init, no download, no
tokenizer): factorized embeddings (16-dim token/position embeddings projected to a 48-dim hidden
size by ``embedding_hidden_mapping_in``) and cross-layer parameter sharing (one layer group, a
single ``AlbertLayer`` run four times). The logits come from the tanh pooler over the first
token; the loss is ``F.cross_entropy`` computed here.

Data: "documents" of 8..24 tokens after a ``[CLS]`` token, padded to the longest one of the
batch with ``attention_mask`` 0. Each word belongs to one of 6 topics (4 words per topic) or is
a neutral filler word. A ``not`` token before a topic word cancels it. The label is the topic
with the most (non-negated) words; documents are drawn with a dominant topic plus distractors,
so the model has to count topic words across the sequence and notice negations.

AdamW with the usual two parameter groups (no weight decay on biases and LayerNorm weights), a
linear warmup then linear decay written as a ``LambdaLR``, gradient clipping at 1.0.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from transformers import AlbertConfig, AlbertForSequenceClassification

PAD_ID, CLS_ID, NOT_ID = 0, 1, 2
N_TOPICS = 6
WORDS_PER_TOPIC = 4
TOPIC_BASE = 3
N_FILLER = 12
FILLER_BASE = TOPIC_BASE + N_TOPICS * WORDS_PER_TOPIC
VOCAB_SIZE = FILLER_BASE + N_FILLER
MIN_WORDS, MAX_WORDS = 8, 24

BATCH_SIZE = 24
PEAK_LR = 2e-3
WARMUP_STEPS = 10
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
VAL_DOCS = 256


def sample_documents(n_docs, gen):
    """Padded token ids, attention mask and topic labels for ``n_docs`` documents."""
    lengths = torch.randint(MIN_WORDS, MAX_WORDS + 1, (n_docs,), generator=gen)
    width = int(lengths.max())
    pos = torch.arange(width)
    inside = pos[None, :] < lengths[:, None]
    words = FILLER_BASE + torch.randint(0, N_FILLER, (n_docs, width), generator=gen)

    # a dominant topic and a rival one, sprinkled over random positions of the document
    topics = torch.rand(n_docs, N_TOPICS, generator=gen).argsort(dim=1)
    main, rival = topics[:, 0], topics[:, 1]
    n_main = torch.randint(3, 6, (n_docs,), generator=gen)
    n_rival = (torch.rand(n_docs, generator=gen) * (n_main + 1).float()).long() + 1
    order = torch.rand(n_docs, width, generator=gen).masked_fill(~inside, 2.0)
    rank = order.argsort(dim=1).argsort(dim=1)
    topic = torch.where(rank < n_main[:, None], main[:, None], rival[:, None])
    is_topic = rank < (n_main + n_rival)[:, None]
    which = torch.randint(0, WORDS_PER_TOPIC, (n_docs, width), generator=gen)
    words = torch.where(is_topic, TOPIC_BASE + topic * WORDS_PER_TOPIC + which, words)

    # a few negations: "not" (in place of a filler word) before a word cancels it
    negate = (words[:, :-1] >= FILLER_BASE) & inside[:, 1:]
    negate &= torch.rand(n_docs, width - 1, generator=gen) < 0.08
    words[:, :-1] = torch.where(negate, NOT_ID, words[:, :-1])

    negated = torch.zeros_like(inside)
    negated[:, 1:] = words[:, :-1] == NOT_ID
    counted = is_topic & ~negated
    counts = torch.zeros(n_docs, N_TOPICS, dtype=torch.long)
    counts.scatter_add_(1, ((words - TOPIC_BASE) // WORDS_PER_TOPIC).clamp(0, N_TOPICS - 1),
                        counted.long())
    # the most frequent topic; ties go to the dominant one
    labels = (2 * counts + F.one_hot(main, N_TOPICS)).argmax(dim=1)

    input_ids = torch.full((n_docs, width + 1), PAD_ID, dtype=torch.long)
    input_ids[:, 0] = CLS_ID
    input_ids[:, 1:] = torch.where(inside, words, PAD_ID)
    attention_mask = torch.cat([torch.ones(n_docs, 1, dtype=torch.long), inside.long()], dim=1)
    return input_ids, attention_mask, labels


def make_classifier():
    cfg = AlbertConfig(
        vocab_size=VOCAB_SIZE,
        embedding_size=16,
        hidden_size=48,
        num_hidden_layers=4,
        num_hidden_groups=1,
        inner_group_num=1,
        num_attention_heads=4,
        intermediate_size=96,
        hidden_act="gelu_new",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        max_position_embeddings=64,
        type_vocab_size=1,
        initializer_range=0.05,
        pad_token_id=PAD_ID,
        num_labels=N_TOPICS,
    )
    return AlbertForSequenceClassification(cfg)


def param_groups(model):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0}]


def warmup_then_linear(total_steps):
    def factor(step):
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        return max(0.0, (total_steps - step) / max(1, total_steps - WARMUP_STEPS))
    return factor


def finite_or_nan(value):
    return value if math.isfinite(value) else "nan"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=120)
    opts = parser.parse_args()

    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(31337 + opts.seed)
    val_ids, val_mask, val_labels = sample_documents(VAL_DOCS, gen)

    model = make_classifier()
    optimizer = torch.optim.AdamW(param_groups(model), lr=PEAK_LR, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear(opts.steps))

    history = []
    model.train()
    for step in range(opts.steps):
        input_ids, attention_mask, labels = sample_documents(BATCH_SIZE, gen)
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        loss = F.cross_entropy(out.logits, labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if step % 20 == 0 or step == opts.steps - 1:
            print(f"step {step:3d} | loss {history[-1]:.4f} | lr {scheduler.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=val_ids, attention_mask=val_mask).logits
        val_loss = F.cross_entropy(logits, val_labels).item()
        accuracy = (logits.argmax(dim=-1) == val_labels).float().mean().item()
    print(f"validation | loss {val_loss:.4f} | accuracy {accuracy:.3f}")

    last = max(1, len(history) // 10)
    result = {
        "first_loss": finite_or_nan(history[0]),
        "train_loss": finite_or_nan(sum(history[-last:]) / last),
        "val_loss": finite_or_nan(val_loss),
    }
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
