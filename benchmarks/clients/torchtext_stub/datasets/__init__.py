"""``Multi30k``: synthetic sentence pairs instead of the download. The source language has 150
words drawn from a long-tailed distribution, sentences of 4 to 16 words (so batches are padded);
the target is a word-for-word translation (a fixed dictionary into another 150 words) with every
adjacent pair of words swapped, plus an article before every fifth word: learnable, but only by
attending to the right source positions."""

import random

from . import multi30k

__all__ = ["Multi30k", "multi30k"]

SIZES = {"train": 3200, "valid": 256, "test": 256}


def _words(rng: random.Random, n: int, prefix: str) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    out: list[str] = []
    while len(out) < n:
        w = prefix + "".join(rng.choice(letters) for _ in range(rng.randint(2, 7)))
        if w not in out:
            out.append(w)
    return out


def _pairs(split: str) -> list[tuple[str, str]]:
    lang = random.Random(7)  # the same dictionary for every split
    src_words = _words(lang, 150, "")
    tgt_words = _words(lang, 150, "t")
    weights = [1.0 / (r + 1) ** 0.9 for r in range(150)]
    rng = random.Random({"train": 1, "valid": 2, "test": 3}[split])
    pairs = []
    for _ in range(SIZES[split]):
        idx = rng.choices(range(150), weights=weights, k=rng.randint(4, 16))
        out = [tgt_words[i] for i in idx]
        for j in range(0, len(out) - 1, 2):
            out[j], out[j + 1] = out[j + 1], out[j]
        out = [w for j, w in enumerate(out) for w in (["la", w] if j % 5 == 4 else [w])]
        pairs.append((" ".join(src_words[i] for i in idx) + "\n", " ".join(out) + "\n"))
    return pairs


def Multi30k(split: str = "train", language_pair: tuple[str, str] = ("de", "en"),
             root: str = "") -> list[tuple[str, str]]:
    return _pairs(split)
