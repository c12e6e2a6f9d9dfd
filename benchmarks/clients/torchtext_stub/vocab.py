"""``build_vocab_from_iterator``: a word -> id table with torchtext's calling conventions."""

from collections import Counter
from collections.abc import Iterable


class Vocab:
    def __init__(self, tokens: list[str]) -> None:
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}
        self.default: int | None = None

    def __len__(self) -> int:
        return len(self.itos)

    def __getitem__(self, token: str) -> int:
        if token in self.stoi:
            return self.stoi[token]
        if self.default is None:
            raise KeyError(token)
        return self.default

    def __call__(self, tokens: list[str]) -> list[int]:
        return [self[t] for t in tokens]

    def set_default_index(self, index: int) -> None:
        self.default = index

    def lookup_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]


def build_vocab_from_iterator(iterator: Iterable[list[str]], min_freq: int = 1,
                              specials: list[str] | None = None,
                              special_first: bool = True) -> Vocab:
    counts = Counter(t for tokens in iterator for t in tokens)
    words = sorted((w for w, c in counts.items() if c >= min_freq),
                   key=lambda w: (-counts[w], w))
    specials = list(specials or [])
    words = [w for w in words if w not in specials]
    return Vocab(specials + words if special_first else words + specials)
