"""Speech-recognition-style training of a tiny transformers Whisper on synthetic log-mel features.

``WhisperForConditionalGeneration`` from a small ``WhisperConfig`` (random init, nothing
downloaded): the usual conv front-end (two Conv1d, the second with stride 2) over 16 mel bins,
2 encoder and 2 decoder layers, decoder self-attention with the causal mask, cross-attention to
the encoder, output projection tied to the decoder's token embedding. SDPA attention.

Data ("utterances"): a vocabulary of 10 words, each with its own spectral signature (two formant
bumps over the mel axis whose height moves from an onset shape to a steady shape). An utterance
is 2..4 words in a row with short random silences between them, each word held for 4..7 frames,
plus background noise, always padded with silence to Whisper's fixed input length. The
transcript is the word sequence followed by end-of-text; labels are teacher-forced and padded
with -100, the decoder input is the transcript shifted right behind the start token.

The loss is ``F.cross_entropy`` over the logits computed here (the model gets no ``labels``).
AdamW with no weight decay on biases and LayerNorms, a linear warmup then a polynomial
(linear) decay to a floor from transformers' schedules, gradient clipping at 1.0.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from transformers import (
    WhisperConfig,
    WhisperForConditionalGeneration,
    get_polynomial_decay_schedule_with_warmup,
)

N_MELS = 16
N_FRAMES = 48  # fixed input length: 2 * max_source_positions
PAD, SOT, EOT = 0, 1, 2
N_WORDS = 10
WORD_BASE = 3
VOCAB = WORD_BASE + N_WORDS
MAX_LABELS = 6  # 4 words + end-of-text, one spare

BATCH = 16
LR = 3e-3
WARMUP = 15
WEIGHT_DECAY = 0.01
CLIP = 1.0
N_VAL = 192


def word_signatures(gen):
    """(N_WORDS, 2, N_MELS): onset and steady spectral shape of every word."""
    bins = torch.arange(N_MELS).float()
    sigs = torch.zeros(N_WORDS, 2, N_MELS)
    for w in range(N_WORDS):
        centres = torch.randperm(N_MELS - 2, generator=gen)[:3].float() + 1.0
        heights = 0.6 + torch.rand(3, generator=gen)
        onset = heights[0] * torch.exp(-0.5 * (bins - centres[0]) ** 2)
        onset += heights[1] * torch.exp(-0.5 * (bins - centres[1]) ** 2)
        steady = heights[1] * torch.exp(-0.5 * (bins - centres[1]) ** 2)
        steady += heights[2] * torch.exp(-0.5 * (bins - centres[2]) ** 2)
        sigs[w, 0], sigs[w, 1] = onset, steady
    return sigs


def synth_batch(n, sigs, gen):
    """Log-mel-like features (n, N_MELS, N_FRAMES), decoder inputs and -100-padded labels."""
    feats = torch.zeros(n, N_MELS, N_FRAMES)
    labels = torch.full((n, MAX_LABELS), -100, dtype=torch.long)
    n_words = torch.randint(2, 5, (n,), generator=gen)
    for b in range(n):
        t = int(torch.randint(0, 4, (1,), generator=gen))
        k = int(n_words[b])
        words = torch.randint(0, N_WORDS, (k,), generator=gen)
        for i, w in enumerate(words.tolist()):
            dur = int(torch.randint(4, 8, (1,), generator=gen))
            ramp = torch.linspace(0.0, 1.0, dur)
            shape = (1 - ramp)[None, :] * sigs[w, 0][:, None] + ramp[None, :] * sigs[w, 1][:, None]
            feats[b, :, t:t + dur] = shape * (0.8 + 0.4 * torch.rand(1, generator=gen))
            t += dur + int(torch.randint(0, 3, (1,), generator=gen))
            labels[b, i] = WORD_BASE + w
        labels[b, k] = EOT
    feats = torch.log(feats + 0.1) + 0.35 * torch.randn(feats.shape, generator=gen)
    feats = (feats - math.log(0.1)) / 2.0  # roughly centred, like normalised log-mels
    decoder_input_ids = torch.full_like(labels, PAD)
    decoder_input_ids[:, 0] = SOT
    decoder_input_ids[:, 1:] = labels[:, :-1].clamp(min=PAD)
    return feats, decoder_input_ids, labels


def build_model():
    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=N_MELS,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        max_source_positions=N_FRAMES // 2,
        max_target_positions=MAX_LABELS + 2,
        pad_token_id=PAD,
        bos_token_id=SOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        init_std=0.05,
        scale_embedding=False,
        use_cache=False,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return WhisperForConditionalGeneration(config)


def grouped_parameters(model):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "layer_norm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def seq_loss(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=-100)


def clean(x):
    return x if math.isfinite(x) else "nan"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(1000 + args.seed)
    sigs = word_signatures(data_gen)
    val = synth_batch(N_VAL, sigs, data_gen)

    model = build_model()
    optimizer = torch.optim.AdamW(grouped_parameters(model), lr=LR, betas=(0.9, 0.98))
    scheduler = get_polynomial_decay_schedule_with_warmup(
        optimizer, num_warmup_steps=WARMUP, num_training_steps=args.steps, lr_end=LR * 0.3,
        power=1.0)

    losses = []
    model.train()
    for step in range(args.steps):
        feats, dec_in, labels = synth_batch(BATCH, sigs, data_gen)
        logits = model(input_features=feats, decoder_input_ids=dec_in).logits
        loss = seq_loss(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            print(f"[{step:4d}] ce={losses[-1]:.4f} lr={scheduler.get_last_lr()[0]:.2e}")

    model.eval()
    with torch.no_grad():
        feats, dec_in, labels = val
        logits = model(input_features=feats, decoder_input_ids=dec_in).logits
        val_loss = seq_loss(logits, labels).item()
        keep = labels != -100
        token_acc = (logits.argmax(-1)[keep] == labels[keep]).float().mean().item()
    print(f"val ce={val_loss:.4f} token accuracy={token_acc:.3f}")

    tail = max(1, len(losses) // 10)
    print("CORPUS_RESULT " + json.dumps({
        "first_loss": clean(losses[0]),
        "train_loss": clean(sum(losses[-tail:]) / tail),
        "val_loss": clean(val_loss),
    }))


if __name__ == "__main__":
    main()
