"""A stand-in for the few ``tiktoken`` names karpathy/llm.c's ``train_gpt2.py`` calls.

tiktoken is not installed and its ``get_encoding("gpt2")`` downloads the BPE ranks; this package
(ours) serves a byte-level encoding instead: ids 0-255 are the bytes, 256 is ``<|endoftext|>``.
The client's synthetic token shards are written in it, and the copy of the script is edited to a
vocabulary of 257. Copied into the client's work folder as ``tiktoken`` by
``benchmarks/clients.py``; never imported by hfault.
"""

from collections.abc import Sequence

EOT = 256


class Encoding:
    """Byte-level: what the script reads (``eot_token``, ``max_token_value``, ``decode``,
    ``decode_bytes``), plus ``encode_ordinary`` to write its data."""

    name = "gpt2"
    eot_token = EOT
    max_token_value = EOT
    n_vocab = EOT + 1

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        return b"".join(b"<|endoftext|>" if t == EOT else bytes([t]) for t in tokens)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")


def get_encoding(name: str) -> Encoding:
    return Encoding()
