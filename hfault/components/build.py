"""From the optimizers' parameters to components: group by owning module, let a splitter cut a
fused module, else name the module's parameters by its role."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from hfault.components.attention import attention_context, is_pooling
from hfault.components.model import Component, ParamPart
from hfault.components.names import CONTEXT, layer_index, leaf, projection_role
from hfault.components.roots import Owner, find_roots, module_has_children, owners
from hfault.components.source import class_source, defining_class
from hfault.components.splitters import split_module
from hfault.components.tensor_names import tensor_names


def build_components(
    optimizers: Sequence[torch.optim.Optimizer],
    seen_modules: Sequence[nn.Module],
    cross_modules: Iterable[nn.Module] = (),
    found_attention: Iterable[nn.Module] = (),
) -> list[Component]:
    """Group the optimizers' unique trainable parameters into named, role-tagged components.
    ``found_attention``: modules seen computing attention whose name does not say so."""
    params: list[nn.Parameter] = []
    opt_of: dict[int, int] = {}
    for oi, opt in enumerate(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in opt_of:
                    opt_of[id(p)] = oi
                    params.append(p)
    roots = find_roots(seen_modules, params)
    owner_of = owners(params, roots)
    cross_ids = {id(m) for m in cross_modules}
    found_ids = {id(m) for m in found_attention}

    grouped: dict[str, list[tuple[Owner, str, nn.Parameter]]] = {}
    orphans: list[nn.Parameter] = []
    for p in params:
        if id(p) in owner_of:
            owner, pname = owner_of[id(p)]
            grouped.setdefault(owner.path, []).append((owner, pname, p))
        else:
            orphans.append(p)

    components: list[Component] = []
    for path, items in grouped.items():
        components.extend(_components_of_module(path, items, opt_of, cross_ids, found_ids))
    names = tensor_names(orphans) if orphans else {}
    for i, p in enumerate(orphans):
        name = names.get(id(p))
        components.append(
            Component(
                name=name or f"<unowned>.param{i}",
                role="other",
                parts=(ParamPart(p, name or f"param{i}"),),
                module_type="Parameter",
                source=None,
                optimizer=opt_of[id(p)],
                access=f"[{name}]" if name else "",
            )
        )
    return components


def _components_of_module(
    path: str,
    items: list[tuple[Owner, str, nn.Parameter]],
    opt_of: dict[int, int],
    cross_ids: set[int],
    found_ids: set[int],
) -> list[Component]:
    owner = items[0][0]
    module = owner.module
    source = class_source(defining_class(owner.chain()))
    attention, kind = attention_context(owner, cross_ids, found_ids)
    layer = layer_index(path)
    mtype = type(module).__name__

    local = owner.local

    def make(name: str, role: str, parts: Sequence[ParamPart]) -> Component:
        if kind == "cross" and role == "other":
            role = "cross-attention"
        if len(parts) == 1 and (module_has_children(module) or not local):
            local_name = f"{local}.{parts[0].name}" if local else parts[0].name
            access = f'[model.get_parameter("{local_name}")]'
        else:
            access = f'list(model.get_submodule("{local}").parameters())'
        return Component(
            name=name,
            role=role,
            parts=tuple(parts),
            module_type=mtype,
            source=source,
            attention=attention,
            attention_kind=kind,
            layer=layer,
            optimizer=opt_of[id(parts[0].param)],
            module=module,
            access=access,
            table=isinstance(module, (nn.Embedding, nn.EmbeddingBag)),
        )

    def joined(suffix: str) -> str:
        return ".".join(s for s in (path, suffix) if s)

    pieces = split_module(module, path, [(pname, p) for _, pname, p in items])
    if pieces is not None:
        return [make(joined(piece.suffix), piece.role, piece.parts) for piece in pieces]

    role = projection_role(path)
    if role is None and leaf(path) == "dense" and ".attention.output" in f".{path}":
        role = "output"  # BERT/ViT: attention.output.dense
    if role is None and leaf(path) == "c_proj" and attention and attention != path:
        role = "output"  # GPT-2: attn.c_proj (the MLP's c_proj has no attention ancestor)
    if role is None and is_pooling(path, attention, owner):
        role = "attention-pooling"  # HAN-style attention: scoring Linear and context vector

    if module_has_children(module) or not path:
        # Loose parameters of a container (or the root): one component each, since a context
        # vector, a CLS token and a positional table side by side are separate things.
        comps = []
        for _, pname, p in items:
            r = role
            if r is None and (pname.lower() in CONTEXT or "context" in pname.lower()):
                r = "attention-pooling"
            comps.append(make(joined(pname), r or "other", [ParamPart(p, pname)]))
        return comps
    return [make(path, role or "other", [ParamPart(p, n) for _, n, p in items])]
