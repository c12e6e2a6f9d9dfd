"""Which module mixes the samples of the batch, from the sample-mixing probe's record (HF213).

The probe records, per tested module, along which of its input's two leading sizes it mixes.
Telling which size is the batch is interpretation, so it lives with the rules: correct modules mix
along the positions only, so the batch is the loss's sample count when the loss is per sample,
otherwise the model input's leading size other than the one a position embedding's ids run along
(a per-token loss over samples × positions cannot tell), else the leading size that fewer modules
mix along (on a tie the first one, where data loaders stack samples), else, when the input's
second size is no module's (an image's channels: the positions are made inside the model), the
first one. A module that holds the
samples folded with windows of each on its first axis mixes along its tokens, whatever their
number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def mixers(modules: Sequence[dict[str, Any]]) -> list[tuple[str, set[int]]]:
    """The deepest mixing modules: (name, the leading sizes it mixes along), leaving out a module
    that only holds a deeper mixer of the same sizes (a block around a mixing attention). A
    module whose two leading sizes are equal (48 channels in a batch of 48) says nothing: which
    of its axes is the batch cannot be told by size."""
    mixing = [(m["module"], {int(s) for s, mixed in zip(m["sizes"], m["mixes"], strict=True)
                             if mixed and m["sizes"].count(s) == 1}) for m in modules]
    mixing = [(name, sizes) for name, sizes in mixing if sizes]
    out = []
    for name, sizes in mixing:
        inner: set[int] = set()
        for other, other_sizes in mixing:
            if other != name and other.startswith(name + "."):
                inner |= other_sizes
        if not sizes <= inner:
            out.append((name, sizes - inner if sizes - inner else sizes))
    return out


def batch_mixers(record: dict[str, Any] | None) -> dict[str, Any]:
    """The modules that mix along the batch, and how the batch was told apart from the
    positions: the loss's leading size when the loss is per sample; otherwise, of the model
    input's two leading sizes, the one a position embedding's ids do not run along, else the one
    fewer modules mix along (correct modules mix along the positions only; on a tie, the first,
    as data loaders stack samples on axis 0), else the first when the positions are made inside
    the model (:func:`_made_inside`)."""
    none: dict[str, Any] = {"culprits": [], "batch": None, "positions": None, "how": None,
                            "peers": 0}
    if not record:
        return none
    found = mixers(record.get("modules") or [])
    axes = record.get("input_axes") or []
    if len(axes) != 2 or axes[0] == axes[1]:
        return none
    a, b = int(axes[0]), int(axes[1])
    count = {a: sum(a in sizes for _, sizes in found), b: sum(b in sizes for _, sizes in found)}
    loss_batch = record.get("batch")
    positions = record.get("positions")
    peers: int | None = None
    if loss_batch in (a, b):
        batch, how = int(loss_batch), "the loss's samples"
    elif positions in (a, b):
        batch, how = (b if positions == a else a), "the position embedding's ids"
    elif count[a] and count[b]:
        batch = a if count[a] <= count[b] else b
        how = "fewer modules mix along it"
    elif count[a] and _made_inside(record.get("modules") or [], found, a, b):
        batch, how = a, "the input's first axis (its positions are made inside the model)"
        others = [size for _, sizes in found for size in sizes if size != a]
        positions = max(set(others), key=others.count)
        peers = sum(bool(sizes - {a}) for _, sizes in found)
    else:
        return none
    if peers is None:
        positions = b if batch == a else a
        peers = count[positions]
    folded = {m["module"] for m in record.get("modules") or [] if _folded(m, batch, (a, b))}
    culprits = [name for name, sizes in found if batch in sizes and name not in folded]
    return {"culprits": culprits, "batch": batch, "positions": positions, "how": how,
            "peers": peers}


def _made_inside(modules: Sequence[dict[str, Any]], found: list[tuple[str, set[int]]],
                 first: int, second: int) -> bool:
    """The model input's second leading size is no tested module's leading size (an image's
    channels, a spectrogram's frequency bins, frames a strided stem subsamples: the positions the
    modules mix along are made inside the model), and some module mixes along a size other than
    the input's first: then those are the positions, and the first axis, where data loaders stack
    samples, is the batch. A model whose every mixer mixes along the first axis (one graph's
    nodes) says nothing."""
    held = {int(size) for m in modules for size in m["sizes"]}
    return second not in held and any(sizes - {first} for _, sizes in found)


def _folded(module: dict[str, Any], batch: int, input_axes: tuple[int, int]) -> bool:
    """A module called on (k·batch, batch, ...) with k ≥ 2 that mixes along its second axis only,
    whose first size is none of the model input's: the samples were folded into its first axis
    with windows or chunks of each (Swin's window attention on (images·windows, tokens), where a
    window of 16 tokens in a batch of 16 images makes the tokens look like the batch). A
    batch/sequence swap puts the input's own positions first instead."""
    sizes, mixes = [int(s) for s in module["sizes"]], list(module["mixes"])
    return (len(sizes) == 2 and sizes[1] == batch and sizes[0] != batch
            and sizes[0] % batch == 0 and sizes[0] not in input_axes
            and mixes == [False, True])
