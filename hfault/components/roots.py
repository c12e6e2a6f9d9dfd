"""The module tree components are named from: which modules are roots, how several roots are
told apart, and which module owns each trained parameter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from hfault.components.names import WRAPPER_SEGMENT, plain_path

_DATA_PARALLEL = (DataParallel, DistributedDataParallel)


@dataclass
class Owner:
    """The module that owns a parameter, with the path to it (its ancestors give its context)."""

    path: str  # module path relative to its root, with root prefix when several roots
    local: str  # module path relative to its root, never prefixed (for get_submodule); compiled
    # wrappers' ``_orig_mod`` left out (the wrapper forwards the lookup)
    module: nn.Module
    ancestors: list[tuple[str, nn.Module]]  # (path, module), outermost first, module excluded

    def chain(self) -> list[tuple[str, nn.Module]]:
        """Ancestors then the module itself, outermost first."""
        return [*self.ancestors, (self.path, self.module)]


def unwrap_data_parallel(module: nn.Module) -> nn.Module:
    """The model inside a data-parallel wrapper (``DistributedDataParallel``, ``DataParallel``):
    components are named as without the wrapper (``fc1``, not ``module.fc1``), so a report of a
    DDP run names what the single-process run names."""
    while isinstance(module, _DATA_PARALLEL):
        module = module.module
    return module


def find_roots(
    modules: Sequence[nn.Module], params: Sequence[nn.Parameter] | None = None
) -> list[nn.Module]:
    """Roots = seen modules that are no other seen module's descendant (and, given ``params``,
    that hold at least one of them: a loss module built inside ``forward`` is not a model), each
    unwrapped from its data-parallel wrapper (:func:`unwrap_data_parallel`).

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
        if id(m) in descendants:
            continue
        m = unwrap_data_parallel(m)
        if id(m) in seen:
            continue
        seen.add(id(m))
        if wanted is None or any(id(p) in wanted for p in m.parameters()):
            roots.append(m)
    return roots


def root_prefixes(roots: Sequence[nn.Module]) -> list[str]:
    """Name prefixes that tell several roots apart (``Encoder.``, ``Encoder_1.``); none for one."""
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


def module_paths(
    seen: Sequence[nn.Module], params: Sequence[nn.Parameter]
) -> dict[int, str]:
    """id(module) -> its dotted path, in the scheme components are named in: relative to its
    model root (``pool``, ``pool.score``), with the roots' prefixes when there are several, and
    the root itself by its class name. A module outside every model (a loss module, a frozen
    copy) is named ``Class.path`` from its own root.

    The models are the roots holding ``params`` (the trained ones); before any optimizer is
    known (a sanity-check forward before the optimizer is built), the roots holding trainable
    parameters, so a module has the same name whenever it is named.
    """
    if not params:
        params = [p for m in seen for p in m.parameters() if p.requires_grad]
    roots = find_roots(seen, params)
    names: dict[int, str] = {}
    for root, prefix in zip(roots, root_prefixes(roots), strict=True):
        for path, module in root.named_modules():
            full = (prefix + plain_path(path) if path
                    else (prefix.rstrip(".") or type(root).__name__))
            names.setdefault(id(module), full)
    for other in find_roots(seen):
        for path, module in other.named_modules():
            full = (f"{type(other).__name__}.{plain_path(path)}" if path
                    else type(other).__name__)
            names.setdefault(id(module), full)
    return names


def owners(
    params: Sequence[nn.Parameter], roots: Sequence[nn.Module]
) -> dict[int, tuple[Owner, str]]:
    """Map id(param) -> (owning module, local name); the first owner in module order wins."""
    wanted = {id(p) for p in params}
    result: dict[int, tuple[Owner, str]] = {}
    for root, prefix in zip(roots, root_prefixes(roots), strict=True):
        stack: list[tuple[str, nn.Module]] = []
        for path, module in root.named_modules():
            depth = 0 if not path else path.count(".") + 1
            del stack[depth:]
            full = (prefix + plain_path(path)) if path else prefix.rstrip(".")
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in wanted and id(p) not in result:
                    # A torch.compile wrapper is no ancestor of its original: the same module
                    # to the script, where the wrapper forwards parameter and submodule lookups.
                    ancestors = [a for a in stack if WRAPPER_SEGMENT not in a[1]._modules]
                    result[id(p)] = (Owner(full, plain_path(path), module, ancestors), pname)
            stack.append((full, module))
    return result


def module_has_children(module: nn.Module) -> bool:
    """True for a container module (one with submodules)."""
    return any(True for _ in module.children())
