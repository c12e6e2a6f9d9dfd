"""What a component is: named, role-tagged parameter parts, and how a report writes one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

ROLES = ("query", "key", "value", "output", "attention-pooling", "cross-attention", "other")


@dataclass(frozen=True)
class ParamPart:
    """A whole parameter, or a slice ``[start:stop]`` of it along ``dim``."""

    param: nn.Parameter = field(compare=False, repr=False)
    name: str
    dim: int = 0
    start: int | None = None
    stop: int | None = None

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The part of ``tensor`` (the parameter itself, its grad, a copy) this part covers. A
        sparse gradient (``nn.Embedding(sparse=True)``) is made dense: norms, zero counts and
        finiteness checks have no sparse kernels, and reading it must not crash the run."""
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        if self.start is None or self.stop is None:
            return tensor
        return tensor.narrow(self.dim, self.start, self.stop - self.start)

    @property
    def numel(self) -> int:
        return self.view(self.param).numel()


@dataclass
class Component:
    """A localizable unit of the model: a module's own parameters or a slice of a fused tensor."""

    name: str
    role: str
    parts: tuple[ParamPart, ...]
    module_type: str
    source: dict[str, object] | None
    attention: str | None = None
    attention_kind: str | None = None
    layer: int | None = None
    optimizer: int = 0
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    access: str = ""
    """Python expression, on the root module ``model``, for the parameters to put in a param group
    (a fused tensor's slice cannot be split off: it names the whole fused module)."""
    init: dict[str, object] | None = None
    """Initialization statistics read before the first update (``probes.init_scale``)."""
    table: bool = False
    """Owned by an ``nn.Embedding`` or ``nn.EmbeddingBag``, subclasses included (transformers'
    learned position tables are subclasses with their own names): a lookup table, not a map."""

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "numel": self.numel,
            "source": self.source,
            "module_type": self.module_type,
            "attention": self.attention,
            "attention_kind": self.attention_kind,
            "layer": self.layer,
            "optimizer": self.optimizer,
            "parameters": [_part_label(p) for p in self.parts],
            "access": self.access,
            "init": self.init,
            "table": self.table,
        }


def _part_label(part: ParamPart) -> str:
    if part.start is None:
        return part.name
    idx = [":"] * part.param.dim()
    idx[part.dim] = f"{part.start}:{part.stop}"
    return f"{part.name}[{', '.join(idx)}]"
