"""Components: the unit hfault localizes faults to.

A component is the set of trainable parameters a module owns directly (``encoder.layer.0.q_lin`` =
its weight and bias), or a slice of a fused tensor (the query rows of ``nn.MultiheadAttention``'s
``in_proj_weight``). Components are built from the *unique* ``Parameter`` objects the optimizers
hold, never from module calls, so tied weights and RNN weights reused over time are one component.
Names are exactly what ``root.named_modules()`` gives (a root prefix only when several roots train;
a data-parallel wrapper's root is the model it wraps).

What a component is (:mod:`.model`), the module tree it is named from (:mod:`.roots`), the naming
conventions roles are read from (:mod:`.names`), attention context (:mod:`.attention`), how fused
modules split (:mod:`.splitters`, extensible with :func:`register_splitter`; see
docs/components.md) and the assembly (:mod:`.build`).
"""

from hfault.components.attention import is_attention_module
from hfault.components.build import build_components
from hfault.components.model import ROLES, Component, ParamPart
from hfault.components.roots import (
    find_roots,
    module_has_children,
    module_paths,
    root_prefixes,
)
from hfault.components.source import class_source
from hfault.components.splitters import (
    QKV,
    Piece,
    Splitter,
    fused,
    register_splitter,
    splitters,
    unregister_splitter,
)

__all__ = [
    "QKV",
    "ROLES",
    "Component",
    "ParamPart",
    "Piece",
    "Splitter",
    "build_components",
    "class_source",
    "find_roots",
    "fused",
    "is_attention_module",
    "module_has_children",
    "module_paths",
    "register_splitter",
    "root_prefixes",
    "splitters",
    "unregister_splitter",
]
