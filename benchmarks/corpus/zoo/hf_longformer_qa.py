"""Extractive QA with a tiny transformers Longformer on synthetic topic "documents".

A ``LongformerForQuestionAnswering`` built from a small ``LongformerConfig`` (random init, no
download, no tokenizer; 2 layers, 128 wide, 4 heads): sliding-window attention with an 8-token
window (4 tokens each side), sequences of up to 50 tokens (the model pads them to 56, seven
windows), global attention on the question tokens, token types 0 for the question and 1 for
the context.

Each example is ``<s> q q q </s> context </s> <pad>...``. The context (24..44 words) is filler
words with three runs of 1-3 topic words, one run in each third of the context, each run of a
different topic (3 topics of 4 words). The question is three words of one of those topics; the
answer span is the context's run of that topic (first to last word of the run). A context token
sees only 4 neighbours on each side locally, so it learns which run is asked for through the
global question tokens.

Start/end logits come from the model's ``qa_outputs`` head; the loss is written here: padded
positions and the question are masked out of the logits, then ``F.cross_entropy`` on start and
end positions, averaged. AdamW with two parameter groups (no weight decay on biases and
LayerNorm weights), a linear warmup then a linear decay to a tenth of the peak (``LambdaLR``),
gradient clipping at 1.0.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from transformers import LongformerConfig, LongformerForQuestionAnswering

# token ids (RoBERTa-like layout: <s>=0, <pad>=1, </s>=2)
BOS, PAD, EOS = 0, 1, 2
N_TOPICS, WORDS_PER_TOPIC, N_FILLER = 3, 4, 12
TOPIC0 = 3
FILLER0 = TOPIC0 + N_TOPICS * WORDS_PER_TOPIC
VOCAB = FILLER0 + N_FILLER

WINDOW = 8
CUE_WORDS = 3
QUESTION_LEN = CUE_WORDS + 2  # <s> topic words </s>
MIN_CONTEXT, MAX_CONTEXT = 24, 44
RUNS = 3

BATCH = 16
LR = 2e-3
WARMUP = 15
FLOOR = 0.1
DECAY = 0.01
CLIP = 1.0
N_VAL = 192
NEG = -1e4
INIT_RANGE = 0.05
HEADS = 4
LAYERS = 2
HIDDEN = 128


def make_examples(n, gen):
    """Token ids, attention mask, global attention mask, start and end positions."""
    width = QUESTION_LEN + MAX_CONTEXT + 1
    ids = torch.full((n, width), PAD, dtype=torch.long)
    starts = torch.empty(n, dtype=torch.long)
    ends = torch.empty(n, dtype=torch.long)
    lengths = torch.randint(MIN_CONTEXT, MAX_CONTEXT + 1, (n,), generator=gen)
    for i in range(n):
        length = int(lengths[i])
        ctx = (FILLER0 + torch.randint(0, N_FILLER, (length,), generator=gen)).tolist()
        topics = torch.randperm(N_TOPICS, generator=gen)[:RUNS].tolist()
        sizes = torch.randint(1, 4, (RUNS,), generator=gen).tolist()
        # one run of same-topic words in each third of the context, fillers around it
        slot = length // RUNS
        spans = []
        for r in range(RUNS):
            at = r * slot + 1 + int(torch.randint(0, slot - sizes[r] - 1, (1,), generator=gen))
            words = torch.randint(0, WORDS_PER_TOPIC, (sizes[r],), generator=gen)
            for j in range(sizes[r]):
                ctx[at + j] = TOPIC0 + topics[r] * WORDS_PER_TOPIC + int(words[j])
            spans.append((at, at + sizes[r] - 1))
        asked = int(torch.randint(0, RUNS, (1,), generator=gen))
        cue = TOPIC0 + topics[asked] * WORDS_PER_TOPIC
        cue += torch.randint(0, WORDS_PER_TOPIC, (CUE_WORDS,), generator=gen)
        row = [BOS, *cue.tolist(), EOS, *ctx, EOS]
        ids[i, : len(row)] = torch.tensor(row)
        starts[i] = QUESTION_LEN + spans[asked][0]
        ends[i] = QUESTION_LEN + spans[asked][1]
    attention_mask = (ids != PAD).long()
    global_mask = torch.zeros_like(ids)
    global_mask[:, :QUESTION_LEN] = 1
    segment = 1 - global_mask
    keep = int(attention_mask.sum(1).max())
    cut = slice(0, keep)
    return ids[:, cut], attention_mask[:, cut], global_mask[:, cut], segment[:, cut], starts, ends


def build_model():
    config = LongformerConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=QUESTION_LEN + MAX_CONTEXT + WINDOW + 4,
        attention_window=WINDOW,
        type_vocab_size=2,
        initializer_range=INIT_RANGE,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        sep_token_id=EOS,
        num_labels=2,
    )
    return LongformerForQuestionAnswering(config)


def grouped_parameters(model):
    plain, no_decay = [], []
    for name, param in model.named_parameters():
        if name.endswith(".bias") or "LayerNorm" in name:
            no_decay.append(param)
        else:
            plain.append(param)
    return [
        {"params": plain, "weight_decay": DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def schedule(total):
    def scale(step):
        if step < WARMUP:
            return (step + 1) / WARMUP
        done = (step - WARMUP) / max(1, total - WARMUP)
        return 1.0 - (1.0 - FLOOR) * min(1.0, done)

    return scale


def span_loss(out, attention_mask, starts, ends):
    answerable = attention_mask.bool()
    answerable[:, :QUESTION_LEN] = False
    start_logits = out.start_logits.masked_fill(~answerable, NEG)
    end_logits = out.end_logits.masked_fill(~answerable, NEG)
    loss = 0.5 * (F.cross_entropy(start_logits, starts) + F.cross_entropy(end_logits, ends))
    exact = (start_logits.argmax(-1) == starts) & (end_logits.argmax(-1) == ends)
    return loss, exact


def as_number(x):
    return x if math.isfinite(x) else "nan"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=90)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(4242 + args.seed)
    val_batch = make_examples(N_VAL, data_gen)

    model = build_model()
    optimizer = torch.optim.AdamW(grouped_parameters(model), lr=LR, betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(args.steps))

    losses = []
    model.train()
    for step in range(args.steps):
        ids, mask, global_mask, segment, starts, ends = make_examples(BATCH, data_gen)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            global_attention_mask=global_mask,
            token_type_ids=segment,
        )
        loss, _ = span_loss(out, mask, starts, ends)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.4f}  lr {scheduler.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        ids, mask, global_mask, segment, starts, ends = val_batch
        out = model(
            input_ids=ids,
            attention_mask=mask,
            global_attention_mask=global_mask,
            token_type_ids=segment,
        )
        val_loss, exact = span_loss(out, mask, starts, ends)
        val_loss = val_loss.item()
    print(f"val  loss {val_loss:.4f}  exact match {exact.float().mean().item():.3f}")

    tail = max(1, len(losses) // 10)
    result = {
        "first_loss": as_number(losses[0]),
        "train_loss": as_number(sum(losses[-tail:]) / tail),
        "val_loss": as_number(val_loss),
    }
    print("CORPUS_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
