"""Components: the unit hfault localizes faults to.

A component is the set of trainable parameters a module owns directly (``encoder.layer.0.q_lin`` =
its weight and bias), or a slice of a fused tensor (the query rows of ``nn.MultiheadAttention``'s
``in_proj_weight``). Components are built from the *unique* ``Parameter`` objects the optimizers
hold, never from module calls, so tied weights and RNN weights reused over time are one component.
Names are exactly what ``root.named_modules()`` gives (a root prefix only when several roots train).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

ROLES = ("query", "key", "value", "output", "attention-pooling", "cross-attention", "other")

_QUERY = {"q_proj", "q_lin", "query", "q", "wq", "w_q", "to_q", "q_attn", "query_proj", "q_linear"}
_KEY = {"k_proj", "k_lin", "key", "k", "wk", "w_k", "to_k", "key_proj", "k_linear"}
_VALUE = {"v_proj", "v_lin", "value", "v", "wv", "w_v", "to_v", "value_proj", "v_linear"}
_OUTPUT = {"o_proj", "out_proj", "out_lin", "wo", "w_o", "to_out", "output_proj", "o"}
_FUSED_QKV = {"qkv", "to_qkv", "qkv_proj", "wqkv", "c_attn", "in_proj"}
_CONTEXT = {"context", "u", "u_w", "u_s", "uw", "us", "context_vector", "query_vector"}
_CROSS_HINTS = ("cross", "encdec", "enc_dec", "encoder_attn")
_ATTN_HINTS = ("attention", "attn")


@dataclass(frozen=True)
class ParamPart:
    """A whole parameter, or a slice ``[start:stop]`` of it along ``dim``."""

    param: nn.Parameter = field(compare=False, repr=False)
    name: str
    dim: int = 0
    start: int | None = None
    stop: int | None = None

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The part of ``tensor`` (the parameter itself, its grad, a copy) this part covers."""
        if self.start is None:
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
        }


def _part_label(part: ParamPart) -> str:
    if part.start is None:
        return part.name
    idx = [":"] * part.param.dim()
    idx[part.dim] = f"{part.start}:{part.stop}"
    return f"{part.name}[{', '.join(idx)}]"


def class_source(cls: type) -> dict[str, object] | None:
    """File and line where a module class is defined, so reports can point editors at it."""
    try:
        _, line = inspect.getsourcelines(cls)
        path = inspect.getsourcefile(cls)
        if path:
            return {"file": path, "line": line}
    except (OSError, TypeError):
        pass
    forward = getattr(cls, "forward", None)
    code = getattr(forward, "__code__", None)
    if code is not None:
        return {"file": code.co_filename, "line": code.co_firstlineno}
    return None


def _leaf(path: str) -> str:
    """Last meaningful path segment (``to_out.0`` -> ``to_out``)."""
    segs = [s for s in path.split(".") if s]
    while segs and segs[-1].isdigit():
        segs.pop()
    return segs[-1].lower() if segs else ""


def _projection_role(path: str) -> str | None:
    leaf = _leaf(path)
    for role, names in (("query", _QUERY), ("key", _KEY), ("value", _VALUE), ("output", _OUTPUT)):
        if leaf in names:
            return role
    return None


def is_attention_module(module: nn.Module, path: str = "") -> bool:
    """MultiheadAttention, or a container named or typed as attention, or one holding q/k/v
    (``path``, when known, adds its name as a hint)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    if not module_has_children(module):
        return False
    text = type(module).__name__.lower() + " " + _leaf(path)
    if any(h in text for h in _ATTN_HINTS):
        return True
    child_roles = {_projection_role(name) for name, _ in module.named_children()}
    return len(child_roles & {"query", "key", "value"}) >= 2


def _layer_index(path: str) -> int | None:
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", path)
    return int(match.group(1)) if match else None


@dataclass
class _Owner:
    path: str  # module path relative to its root, with root prefix when several roots
    local: str  # module path relative to its root, never prefixed (for get_submodule)
    module: nn.Module
    ancestors: list[tuple[str, nn.Module]]  # (path, module), outermost first, module excluded


def find_roots(
    modules: Sequence[nn.Module], params: Sequence[nn.Parameter] | None = None
) -> list[nn.Module]:
    """Roots = seen modules that are no other seen module's descendant (and, given ``params``,
    that hold at least one of them: a loss module built inside ``forward`` is not a model).

    ``ModuleList``/``ModuleDict`` never run forward, so descendants must come from ``.modules()``,
    not from the modules seen running.
    """
    descendants: set[int] = set()
    for m in modules:
        for sub in m.modules():
            if sub is not m:
                descendants.add(id(sub))
    wanted = None if params is None else {id(p) for p in params}
    roots, seen = [], set()
    for m in modules:
        if id(m) in descendants or id(m) in seen:
            continue
        seen.add(id(m))
        if wanted is None or any(id(p) in wanted for p in m.parameters()):
            roots.append(m)
    return roots


def root_prefixes(roots: Sequence[nn.Module]) -> list[str]:
    if len(roots) <= 1:
        return [""] * len(roots)
    counts: dict[str, int] = {}
    prefixes = []
    for r in roots:
        base = type(r).__name__
        n = counts.get(base, 0)
        counts[base] = n + 1
        prefixes.append(f"{base}.") if n == 0 else prefixes.append(f"{base}_{n}.")
    return prefixes


def _owners(
    params: Sequence[nn.Parameter], roots: Sequence[nn.Module]
) -> dict[int, tuple[_Owner, str]]:
    """Map id(param) -> (owning module, local name); the first owner in module order wins."""
    wanted = {id(p) for p in params}
    result: dict[int, tuple[_Owner, str]] = {}
    for root, prefix in zip(roots, root_prefixes(roots), strict=True):
        stack: list[tuple[str, nn.Module]] = []
        for path, module in root.named_modules():
            depth = 0 if not path else path.count(".") + 1
            del stack[depth:]
            full = (prefix + path) if path else prefix.rstrip(".")
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in wanted and id(p) not in result:
                    result[id(p)] = (_Owner(full, path, module, list(stack)), pname)
            stack.append((full, module))
    return result


def _fused_split(module: nn.Module, pname: str, p: nn.Parameter) -> list[tuple[str, int, int]]:
    """How a fused q/k/v tensor splits: [(role, start, stop)] along the split dimension."""
    if isinstance(module, nn.MultiheadAttention) and pname in ("in_proj_weight", "in_proj_bias"):
        e = module.embed_dim
        return [("query", 0, e), ("key", e, 2 * e), ("value", 2 * e, 3 * e)]
    return []


def _split_dim(module: nn.Module, p: nn.Parameter) -> int:
    # transformers' Conv1D (GPT-2) stores weight as (in, out): the fused outputs are columns.
    if type(module).__name__ == "Conv1D" and p.dim() == 2:
        return 1
    return 0


def _generic_fused(path: str, module: nn.Module) -> list[str] | None:
    """Roles of a fused projection (``c_attn``, ``qkv``) split into equal chunks, else None."""
    if _leaf(path) not in _FUSED_QKV or isinstance(module, nn.MultiheadAttention):
        return None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    dim = _split_dim(module, weight)
    out, inp = weight.shape[dim], weight.shape[1 - dim]
    if out == 3 * inp or (out % 3 == 0 and _leaf(path) != "c_attn"):
        return ["query", "key", "value"]
    if out == 2 * inp:
        return ["key", "value"]
    return None


def build_components(
    optimizers: Sequence[torch.optim.Optimizer],
    seen_modules: Sequence[nn.Module],
    cross_modules: Iterable[nn.Module] = (),
) -> list[Component]:
    """Group the optimizers' unique trainable parameters into named, role-tagged components."""
    params: list[nn.Parameter] = []
    opt_of: dict[int, int] = {}
    for oi, opt in enumerate(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in opt_of:
                    opt_of[id(p)] = oi
                    params.append(p)
    roots = find_roots(seen_modules, params)
    owners = _owners(params, roots)
    cross_ids = {id(m) for m in cross_modules}

    grouped: dict[str, list[tuple[_Owner, str, nn.Parameter]]] = {}
    orphans: list[nn.Parameter] = []
    for p in params:
        if id(p) in owners:
            owner, pname = owners[id(p)]
            grouped.setdefault(owner.path, []).append((owner, pname, p))
        else:
            orphans.append(p)

    components: list[Component] = []
    for path, items in grouped.items():
        components.extend(_components_of_module(path, items, opt_of, cross_ids))
    for i, p in enumerate(orphans):
        components.append(
            Component(
                name=f"<unowned>.param{i}",
                role="other",
                parts=(ParamPart(p, f"param{i}"),),
                module_type="Parameter",
                source=None,
                optimizer=opt_of[id(p)],
            )
        )
    return components


def _attention_context(
    owner: _Owner, cross_ids: set[int]
) -> tuple[str | None, str | None]:
    """The nearest enclosing attention module (or the module itself) and whether it is cross."""
    chain = [*owner.ancestors, (owner.path, owner.module)]
    for i in range(len(chain) - 1, -1, -1):
        path, module = chain[i]
        if is_attention_module(module, path):
            # BERT/ViT nest the projections in `attention.self` and the output in
            # `attention.output`: both belong to the enclosing `attention`.
            if _leaf(path) == "self" and i > 0:
                outer_path, outer = chain[i - 1]
                if is_attention_module(outer, outer_path):
                    path, module = outer_path, outer
            kind = "cross" if _is_cross(path, module, cross_ids) else "self"
            return path, kind
    return None, None


def _defining_class(owner: _Owner) -> type:
    """The class to point a person at: the module's own class, unless it is a torch.nn building
    block (Linear, MultiheadAttention), then the nearest enclosing class that holds it."""
    chain = [*owner.ancestors, (owner.path, owner.module)]
    for _, module in reversed(chain):
        if not type(module).__module__.startswith("torch.nn."):
            return type(module)
    return type(owner.module)


def _is_cross(path: str, module: nn.Module, cross_ids: set[int]) -> bool:
    if id(module) in cross_ids or getattr(module, "is_cross_attention", False):
        return True
    text = (path + "." + type(module).__name__).lower()
    return any(h in text for h in _CROSS_HINTS)


def _components_of_module(
    path: str,
    items: list[tuple[_Owner, str, nn.Parameter]],
    opt_of: dict[int, int],
    cross_ids: set[int],
) -> list[Component]:
    owner = items[0][0]
    module = owner.module
    source = class_source(_defining_class(owner))
    attention, kind = _attention_context(owner, cross_ids)
    layer = _layer_index(path)
    mtype = type(module).__name__

    local = owner.local

    def make(name: str, role: str, parts: list[ParamPart]) -> Component:
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
        )

    def joined(suffix: str) -> str:
        return f"{path}.{suffix}" if path else suffix

    # nn.MultiheadAttention: split fused in_proj into q/k/v; bias_k/bias_v join key/value.
    if isinstance(module, nn.MultiheadAttention):
        by_role: dict[str, list[ParamPart]] = {"query": [], "key": [], "value": []}
        rest: list[ParamPart] = []
        for _, pname, p in items:
            split = _fused_split(module, pname, p)
            if split:
                for role, a, b in split:
                    by_role[role].append(ParamPart(p, pname, 0, a, b))
            elif pname in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                by_role[{"q": "query", "k": "key", "v": "value"}[pname[0]]].append(
                    ParamPart(p, pname)
                )
            elif pname in ("bias_k", "bias_v"):
                by_role["key" if pname == "bias_k" else "value"].append(ParamPart(p, pname))
            else:
                rest.append(ParamPart(p, pname))
        out = [make(joined(f"in_proj.{r}"), r, parts) for r, parts in by_role.items() if parts]
        if rest:
            out.append(make(path, "other", rest))
        return out

    fused = _generic_fused(path, module)
    if fused:
        out = []
        for role_index, role in enumerate(fused):
            parts = []
            for _, pname, p in items:
                dim = _split_dim(module, p) if p.dim() == 2 else 0
                size = p.shape[dim] // len(fused)
                a = role_index * size
                parts.append(ParamPart(p, pname, dim, a, a + size))
            out.append(make(joined(role), role, parts))
        return out

    role = _projection_role(path)
    if role is None and _leaf(path) == "dense" and ".attention.output" in f".{path}":
        role = "output"  # BERT/ViT: attention.output.dense
    if role is None and _leaf(path) == "c_proj" and attention and attention != path:
        role = "output"  # GPT-2: attn.c_proj (the MLP's c_proj has no attention ancestor)
    if role is None and _is_pooling(path, attention, module, owner):
        role = "attention-pooling"  # HAN-style attention: scoring Linear and context vector

    if module_has_children(module) or not path:
        # Loose parameters of a container (or the root): one component each, since a context
        # vector, a CLS token and a positional table side by side are separate things.
        comps = []
        for _, pname, p in items:
            r = role
            if r is None and (pname.lower() in _CONTEXT or "context" in pname.lower()):
                r = "attention-pooling"
            comps.append(make(joined(pname), r or "other", [ParamPart(p, pname)]))
        return comps
    return [make(path, role or "other", [ParamPart(p, n) for _, n, p in items])]


def _is_pooling(path: str, attention: str | None, module: nn.Module, owner: _Owner) -> bool:
    """Attention without query/key/value projections (HAN word/sentence attention) is pooling."""
    leaf = _leaf(path)
    if leaf in _CONTEXT or "context" in leaf:
        return True
    weight = getattr(module, "weight", None)
    is_projection = isinstance(weight, torch.Tensor) and weight.dim() == 2
    if not (is_projection and any(h in leaf for h in _ATTN_HINTS)):
        return False  # e.g. the GRU encoder that HAN keeps inside its WordAttention module
    if attention is None:
        return True
    chain = [*owner.ancestors, (owner.path, module)]
    attn_module = next(m for p, m in chain if p == attention)
    return not _has_projections(attn_module)


def _has_projections(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return True
    for name, _ in module.named_modules():
        leaf = _leaf(name)
        if leaf and (_projection_role(name) in ("query", "key", "value") or leaf in _FUSED_QKV):
            return True
    return False


def module_has_children(module: nn.Module) -> bool:
    """True for a container module (one with submodules)."""
    return any(True for _ in module.children())
