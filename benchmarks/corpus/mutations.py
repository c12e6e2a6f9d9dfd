"""Run-time mutation operators of the fault-injection corpus (see README.md, "Mutation operators").

A mutant is the healthy program plus one operator installed by ``launch.py`` before the program
runs, so the program's source stays the healthy twin. Every operator is a function
``install(mut: Mutation) -> None`` in ``OPERATORS``; it patches torch through ``Mutation.patch``
(which wraps *whatever is there at that moment*: hfault's own wrappers of
``Optimizer.__init__``, ``F.softmax``, ``F.cross_entropy``... stay underneath and keep seeing
every call, with the mutated arguments) or registers hooks through ``Mutation.hook``.

Design:

- Module operators act at the first ``torch.optim.Optimizer.__init__`` call (every torch
  optimizer, transformers' ``Trainer`` and custom optimizers go through it via ``super()``).
  The ``params`` argument is materialized into a list of groups; the root model is the live
  ``nn.Module`` (found through ``gc``) owning most of the optimizer's parameters, ties going to
  the outermost; the target is ``root.get_submodule(target)`` (the names of
  ``root.named_modules()``, which are hfault's component names).
  ``lr_up`` rewrites the groups *before* the wrapped ``__init__`` (hfault records the mutated
  groups); ``init_scale``/``init_mean``/``freeze`` edit the weights right after it; the others
  register hooks on the target.
- The softmax/mask operators are active only while the target's forward runs (a forward
  pre-hook increments a depth, a forward hook registered with ``always_call=True`` decrements it,
  exceptions included). While active, ``torch.softmax``, ``F.softmax``, ``Tensor.softmax``,
  ``F.scaled_dot_product_attention`` (and, for the mask operators, ``Tensor.masked_fill(_)``
  and ``torch.masked_fill``) behave mutated; otherwise they call straight through. The pre-hook
  re-wraps any of these attributes that someone (hfault's attention probe opens and closes its
  windows by setattr) has replaced since, so the mutation survives such restores.
- Masks are handled in every form they reach a softmax: ``masked_fill`` with a value <= -1e4 or
  -inf (hand-written attention, ``nn.MultiheadAttention``'s bool→float conversion), SDPA's
  ``is_causal``/``attn_mask`` (bool or additive float), and additive float masks already folded
  into the softmax input (transformers' eager attention: ``scores + causal_mask``): there an entry
  <= -1e4 counts as masked. mask_drop gives a masked entry of the softmax input the minimum of its
  row's unmasked entries (the raw score is lost once ``finfo.min`` was added); mask_shift unmasks
  (i, i+1) of a causal pattern (all of j > i masked) and gives it the row's diagonal score.
- Run operators patch functions for the whole run: the optimizer's LR (every optimizer),
  ``clip_grad_norm_``/``clip_grad_value_``, ``zero_grad``, ``F.cross_entropy`` (loss operators
  act only while grad is enabled, so the program's validation loss stays the true loss).
- A re-entrancy guard makes every wrapper call straight through while one of them is already
  calling its original (so a wrapper installed twice, or hfault's SDPA probe recomputing weights
  with ``Tensor.softmax``, is never mutated twice); calls made from hfault's own modules
  (``hfault.*``: its probes, the verify rerun's ``clip_grad_norm_`` fix) are never mutated.
- ``Mutation.effective`` counts the calls actually mutated; ``launch.py`` exits 2 when a mutant
  never took effect (a target without a mask, a program that never clips...), never silently
  running the healthy program.
"""

from __future__ import annotations

import gc
import math
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MASKED = -1e4  # an entry <= this (finite or -inf) of a softmax input / additive mask is masked
PREFIX = "[corpus-mutation]"
WRAPPER_FILE = "<corpus-mutation>"

MODULE_OPS = ("lr_up", "init_scale", "init_mean", "freeze", "detach", "skip_norm",
              "softmax_scale", "softmax_axis", "mask_drop", "mask_shift", "batch_mix")
FLAG_OPS = ("softmax_scale", "softmax_axis", "mask_drop", "mask_shift")
RUN_OPS = ("lr_global", "no_clip", "no_zero_grad", "label_noise", "probs_into_loss")
DEFAULT_FACTOR: dict[str, float | None] = {
    "lr_up": 100.0, "init_scale": 50.0, "init_mean": 5.0, "softmax_scale": 16.0,
    "lr_global": 30.0, "label_noise": 0.4,
}


class MutationError(SystemExit):
    """The mutation cannot be installed as asked (unknown target...): exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


_local = threading.local()


def _depth() -> int:
    return getattr(_local, "depth", 0)


@contextmanager
def passthrough() -> Iterator[None]:
    """Inside: every mutation wrapper calls straight through."""
    _local.depth = _depth() + 1
    try:
        yield
    finally:
        _local.depth -= 1


def _from_hfault(frame: Any) -> bool:
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return name == "hfault" or name.startswith("hfault.")


class Mutation:
    """One installed operator: its options, patches, hooks, and what it did."""

    def __init__(self, op: str, target: str | None = None, factor: float | None = None,
                 seed: int = 0, log: Callable[[str], None] | None = None) -> None:
        if op not in OPERATORS:
            raise MutationError(f"unknown operator {op!r} (known: {', '.join(OPERATORS)})")
        if op in MODULE_OPS and not target and target != "":
            raise MutationError(f"operator {op} needs --target MODULE")
        if op not in MODULE_OPS and target:
            raise MutationError(f"operator {op} takes no --target")
        self.op, self.target, self.seed = op, target, seed
        self.factor = DEFAULT_FACTOR.get(op) if factor is None else float(factor)
        if op in ("softmax_scale",) and self.factor is None:
            raise MutationError(f"operator {op} needs --factor")
        self._log = log or (lambda msg: print(f"{PREFIX} {msg}", file=sys.stderr, flush=True))
        self.disabled = False
        self.installed = False
        self.applied = False  # the operator reached its injection point (optimizer, hooks...)
        self.effective = 0  # calls actually mutated (flag operators, run patches)
        self.active = 0  # depth of the target's forward (flag operators)
        self.root: nn.Module | None = None
        self.module: nn.Module | None = None
        self._patches: list[tuple[Any, str, Any, Callable[[Any], Any]]] = []
        self._wrappers: list[Any] = []
        """Every wrapper this mutation installed, kept alive: a wrapper that someone else's restore
        dropped must not be freed, or a new foreign function could get its id and pass for it."""
        self._handles: list[Any] = []
        self._undo: list[Callable[[], None]] = []
        self._optimizers = 0

    # ---------------------------------------------------------------- lifecycle
    def describe(self) -> str:
        parts = [self.op]
        if self.target is not None:
            parts.append(f"target={self.target or '<root>'}")
        if self.factor is not None:
            parts.append(f"factor={self.factor:g}")
        if self.op == "label_noise":
            parts.append(f"mutation_seed={self.seed}")
        return " ".join(parts)

    def log(self, msg: str) -> None:
        self._log(msg)

    def install(self) -> Mutation:
        OPERATORS[self.op](self)
        self.installed = True
        self.log(f"installed {self.describe()}")
        return self

    def uninstall(self) -> None:
        """Stops every effect; puts back what it wrapped where its wrapper is still in place
        (never the pristine originals), and leaves its wrappers calling through otherwise."""
        self.disabled = True
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        for owner, name, original, _ in reversed(self._patches):
            if self._is_mine(owner.__dict__.get(name)):
                setattr(owner, name, original)
        self._patches.clear()

    def mark_applied(self, detail: str) -> None:
        if not self.applied:
            self.applied = True
            self.log(f"applied {self.op}: {detail}")

    def took_effect(self, detail: str) -> None:
        if not self.effective:
            self.log(f"{self.op} took effect: {detail}")
        self.effective += 1

    def problem(self) -> str | None:
        """Why the mutant never took effect (launch.py exits 2), or None."""
        if not self.applied:
            where = ("no torch.optim optimizer was created" if self.op in MODULE_OPS
                     or self.op == "lr_global" else f"the program never reached {self.op}'s "
                     "injection point")
            return f"{self.describe()} was never applied: {where}"
        if self.op in FLAG_OPS and not self.effective:
            return (f"{self.describe()} never took effect: no softmax/attention/mask inside "
                    f"{self.target!r}'s forward matched")
        return None

    # ---------------------------------------------------------------- patching
    def patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Replace ``owner.name`` by ``make(current)``; the current one is called underneath."""
        current = getattr(owner, name)
        wrapper = make(current)
        if hasattr(wrapper, "__code__"):  # hfault's "user line" lookups skip "<...>" frames
            wrapper.__code__ = wrapper.__code__.replace(co_filename=WRAPPER_FILE)
        self._wrappers.append(wrapper)
        setattr(owner, name, wrapper)
        self._patches.append((owner, name, current, make))

    def ensure_patches(self) -> None:
        """Re-wrap every patched attribute that was replaced since (by a restore elsewhere)."""
        for owner, name, _, make in list(self._patches):
            if not self._is_mine(owner.__dict__.get(name)):
                self.patch(owner, name, make)

    def _is_mine(self, attribute: Any) -> bool:
        return any(attribute is w for w in self._wrappers)

    def skip(self, frame: Any) -> bool:
        """Whether a wrapper must call straight through (caller frame given)."""
        return self.disabled or _depth() > 0 or _from_hfault(frame)

    def hook(self, handle: Any) -> None:
        self._handles.append(handle)

    def on_uninstall(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    # ---------------------------------------------------------------- module resolution
    def resolve(self, params: list[torch.Tensor]) -> nn.Module:
        self.root = find_root(params)
        if self.root is None:
            raise MutationError("no live nn.Module holds the optimizer's parameters")
        try:
            self.module = self.root.get_submodule(self.target or "")
        except AttributeError:
            names = [n for n, _ in self.root.named_modules() if n]
            hint = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
            raise MutationError(f"target {self.target!r} is not a module of the root model "
                                f"{type(self.root).__name__} (modules: {hint})") from None
        return self.module


# ==================================================================== helpers
def _tensor(entry: Any) -> Any:
    """A params entry: a tensor or a (name, tensor) pair (named parameters)."""
    return entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry


def split_params(args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """``Optimizer.__init__(params, defaults)``'s arguments as (groups, defaults), the groups as
    dicts with list ``params`` (what torch itself makes of them); None where torch will reject
    them anyway (then the call goes through untouched)."""
    params = args[0] if args else kwargs.get("params")
    defaults = args[1] if len(args) > 1 else kwargs.get("defaults", {})
    if params is None or isinstance(params, torch.Tensor) or not isinstance(defaults, dict):
        return None
    groups = list(params)
    if not groups:
        return None
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    out = []
    for g in groups:
        if not isinstance(g, dict) or "params" not in g:
            return None
        entries = g["params"]
        named = isinstance(entries, tuple) and len(entries) == 2 and isinstance(entries[0], str)
        if isinstance(entries, torch.Tensor) or named:
            entries = [entries]
        out.append({**g, "params": list(entries)})
    return out, defaults


def join_params(args: tuple[Any, ...], kwargs: dict[str, Any], groups: list[dict[str, Any]],
                defaults: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    kwargs = dict(kwargs)
    if args:
        args = (groups, *args[1:])
    else:
        kwargs["params"] = groups
    if len(args) > 1:
        args = (args[0], defaults, *args[2:])
    elif "defaults" in kwargs:
        kwargs["defaults"] = defaults
    return args, kwargs


def find_root(params: list[torch.Tensor]) -> nn.Module | None:
    """Among live modules, the one owning most of ``params``; ties: most parameters overall,
    then the outermost."""
    wanted = {id(p) for p in params}
    best, best_key = None, None
    modules = [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]
    for m in modules:
        ids = {id(p) for p in m.parameters()}
        owned = len(ids & wanted)
        if not owned:
            continue
        key = (owned, len(ids), sum(1 for _ in m.modules()))
        if best_key is None or key > best_key:
            best, best_key = m, key
    return best


def _group_lr(group: dict[str, Any], defaults: dict[str, Any]) -> Any:
    lr = group.get("lr", defaults.get("lr"))
    if lr is None:
        raise MutationError("the optimizer has no learning rate ('lr') to scale")
    return lr


def _weights(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.ndim >= 2]


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor inside tensors, tuples/lists (namedtuples too), dicts and
    transformers ``ModelOutput``s."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map_tensors(x, fn) for x in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(x, fn) for x in obj)
    if isinstance(obj, dict):
        items = {k: _map_tensors(v, fn) for k, v in obj.items()}
        if type(obj) is dict:
            return items
        try:
            return type(obj)(**items)  # ModelOutput (dataclass + OrderedDict)
        except TypeError:
            try:
                return type(obj)(items)
            except TypeError:
                return items
    return obj


def _is_norm(module: nn.Module) -> bool:
    norms: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                               nn.modules.batchnorm._BatchNorm,
                               nn.modules.instancenorm._InstanceNorm)
    if hasattr(nn, "RMSNorm"):
        norms += (nn.RMSNorm,)
    return isinstance(module, norms) or "norm" in type(module).__name__.lower()


def _optimizer_hook(mut: Mutation, before: Callable[..., Any] | None = None,
                    after: Callable[[torch.optim.Optimizer], None] | None = None,
                    every: bool = False) -> None:
    """Wrap ``Optimizer.__init__``: ``before(opt, groups, defaults) -> (groups, defaults)`` runs
    on the materialized arguments, ``after(opt)`` after the wrapped init; at the first optimizer
    only unless ``every``."""

    def make(original: Any) -> Any:
        def __init__(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            if mut.disabled or (mut._optimizers and not every) or getattr(
                    opt, "_corpus_mutated", False):
                return original(opt, *args, **kwargs)
            mut._optimizers += 1
            opt._corpus_mutated = True  # type: ignore[attr-defined]
            if before is not None:
                split = split_params(args, kwargs)
                if split is None:
                    raise MutationError(f"cannot read the params of {type(opt).__name__}")
                groups, defaults = before(opt, *split)
                args, kwargs = join_params(args, kwargs, groups, defaults)
            original(opt, *args, **kwargs)
            if after is not None:
                after(opt)

        return __init__

    mut.patch(torch.optim.Optimizer, "__init__", make)


def _module_op(mut: Mutation, apply: Callable[[nn.Module, torch.optim.Optimizer], str],
               rewrite: Callable[..., Any] | None = None) -> None:
    """A module operator: resolve the target from the first optimizer's params, then
    ``rewrite(groups, defaults)`` before the init and/or ``apply(module, opt)`` after it."""

    def before(opt: torch.optim.Optimizer, groups: list[dict[str, Any]],
               defaults: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        mut.resolve([_tensor(e) for g in groups for e in g["params"]])
        if rewrite is not None:
            groups, defaults = rewrite(groups, defaults)
        return groups, defaults

    def after(opt: torch.optim.Optimizer) -> None:
        assert mut.module is not None
        # hooks must see every attention call (nn.MultiheadAttention's eval fast path skips them)
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        mut.on_uninstall(lambda: torch.backends.mha.set_fastpath_enabled(fastpath))
        detail = apply(mut.module, opt)
        mut.mark_applied(f"{detail} (at {type(opt).__name__} creation; root "
                         f"{type(mut.root).__name__})")

    _optimizer_hook(mut, before, after)


# ==================================================================== module operators
def lr_up(mut: Mutation) -> None:
    info: dict[str, Any] = {}

    def rewrite(groups: list[dict[str, Any]], defaults: dict[str, Any]
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        assert mut.module is not None
        mine = {id(p) for p in mut.module.parameters()}
        out, new = [], []
        moved_total = 0
        for g in groups:
            keep = [e for e in g["params"] if id(_tensor(e)) not in mine]
            moved = [e for e in g["params"] if id(_tensor(e)) in mine]
            moved_total += len(moved)
            lr = _group_lr(g, defaults) if moved else None
            if moved and not keep:  # the whole group is the target's: scale it in place
                out.append({**g, "lr": lr * mut.factor})
            elif moved:
                out.append({**g, "params": keep})
                options = {k: v for k, v in g.items() if k != "params"}
                new.append({**options, "params": moved, "lr": lr * mut.factor})
            else:
                out.append(g)
        if not moved_total:
            raise MutationError(f"target {mut.target!r} has no parameter in the optimizer")
        info["moved"], info["new"] = moved_total, len(new)
        return out + new, defaults

    def apply(module: nn.Module, opt: torch.optim.Optimizer) -> str:
        return (f"{info['moved']} tensors of {mut.target!r} at {mut.factor:g}x LR "
                f"({info['new']} new param group(s); {len(opt.param_groups)} groups)")

    _module_op(mut, apply, rewrite)


def _edit_weights(mut: Mutation, edit: Callable[[nn.Parameter], None], what: str) -> None:
    """Apply ``edit`` in place to every >=2-D parameter of the target at optimizer creation."""
    def apply(module: nn.Module, opt: torch.optim.Optimizer) -> str:
        ws = _weights(module)
        if not ws:
            raise MutationError(f"target {mut.target!r} has no >=2-D parameter")
        with torch.no_grad():
            for p in ws:
                edit(p)
        return f"{len(ws)} weights of {mut.target!r}: {what}"

    _module_op(mut, apply)


def init_scale(mut: Mutation) -> None:
    _edit_weights(mut, lambda p: p.mul_(mut.factor), f"x {mut.factor:g}")


def init_mean(mut: Mutation) -> None:
    _edit_weights(mut, lambda p: p.add_(mut.factor * p.std()), f"+ {mut.factor:g} x std")


def freeze(mut: Mutation) -> None:
    def apply(module: nn.Module, opt: torch.optim.Optimizer) -> str:
        ps = list(module.parameters())
        if not ps:
            raise MutationError(f"target {mut.target!r} has no parameter")
        for p in ps:
            p.requires_grad_(False)
        return f"{len(ps)} parameters of {mut.target!r} frozen"

    _module_op(mut, apply)


def detach(mut: Mutation) -> None:
    def post(module: nn.Module, args: Any, output: Any) -> Any:
        if mut.disabled:
            return None
        mut.took_effect(f"output of {mut.target!r} detached")
        return _map_tensors(output, lambda t: t.detach())

    def apply(module: nn.Module, opt: torch.optim.Optimizer) -> str:
        mut.hook(module.register_forward_hook(post))
        return f"forward hook on {mut.target!r} ({type(module).__name__}) detaches its output"

    _module_op(mut, apply)


def skip_norm(mut: Mutation) -> None:
    def post(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        if mut.disabled:
            return None
        first = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(first, torch.Tensor):
            return None
        mut.took_effect(f"{mut.target!r} returned its input")
        if isinstance(output, torch.Tensor) and output.shape != first.shape:
            raise MutationError(f"{mut.target!r}: output shape {tuple(output.shape)} is not "
                                f"its input's {tuple(first.shape)}")
        return first

    def apply(module: nn.Module, opt: torch.optim.Optimizer) -> str:
        if not _is_norm(module):
            raise MutationError(f"skip_norm: target {mut.target!r} is a "
                                f"{type(module).__name__}, not a norm layer")
        mut.hook(module.register_forward_hook(post, with_kwargs=True))
        return f"{mut.target!r} ({type(module).__name__}) returns its input"

    _module_op(mut, apply)


def _swap01(t: Any) -> Any:
    if isinstance(t, torch.Tensor) and t.ndim >= 2:
        return t.transpose(0, 1).contiguous()
    return t


def _follow_swap(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Another input of the batch-mixed module, in the swapped layout: tensors laid out
    (batch or 1, positions, ...) like the first input (rotary tables, key-padding masks) are
    swapped;
    a 4-D attention mask (batch, 1, 1 or queries, keys) whose rows are all alike (key padding)
    becomes (positions, 1, 1, batch), a pure causal one the causal mask over the batch (what a
    model building its mask from the swapped input would make); anything else stays."""
    B, L = shape
    if t.ndim >= 2 and t.shape[0] in (1, B) and t.shape[1] == L:  # (1, L, ...) broadcasts
        return _swap01(t)
    if t.ndim == 4 and t.shape[0] in (1, B) and t.shape[1] == 1 and t.shape[-1] == L:
        rows = t[:, :, :1, :]
        if t.shape[2] == 1 or bool((t == rows).all()):
            return rows.expand(B, -1, -1, -1).permute(3, 1, 2, 0).contiguous()
        blocked = ~t if t.dtype == torch.bool else t <= MASKED
        if t.shape[2] == L and _causal_blocked(blocked) and not bool(
                (blocked & ~(_superdiag(t) | _upper(t, 2))).any()):
            # a pure causal mask: the same causal pattern over the new positions (the batch)
            allowed = torch.ones(B, B, dtype=torch.bool, device=t.device).tril()[None, None]
            if t.dtype == torch.bool:
                return allowed
            low = torch.full((), torch.finfo(t.dtype).min, dtype=t.dtype, device=t.device)
            return torch.where(allowed, torch.zeros((), dtype=t.dtype, device=t.device), low)
    return t


def _upper(like: torch.Tensor, offset: int) -> torch.Tensor:
    L, S = like.shape[-2:]
    i = torch.arange(L, device=like.device)[:, None]
    j = torch.arange(S, device=like.device)[None, :]
    return j >= i + offset


def batch_mix(mut: Mutation) -> None:
    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if mut.disabled:
            return None
        if args and isinstance(args[0], torch.Tensor):
            first = args[0]
        elif isinstance(kwargs.get("hidden_states"), torch.Tensor):
            first = kwargs["hidden_states"]
        else:
            return None
        if first.ndim < 3:
            raise MutationError(f"batch_mix: {mut.target!r}'s input is {first.ndim}-D, not "
                                "(batch, positions, ...)")
        swapped = _swap01(first)  # also where the same tensor is passed again (x, x, x)
        shape = tuple(first.shape[:2])

        def follow(t: Any) -> Any:
            if t is first:
                return swapped
            if isinstance(t, tuple):
                return tuple(follow(x) for x in t)
            return _follow_swap(t, shape) if isinstance(t, torch.Tensor) else t

        args = tuple(follow(a) for a in args)
        kwargs = {k: follow(v) for k, v in kwargs.items()}
        mut.took_effect(f"dims 0 and 1 of {mut.target!r}'s input and output swapped")
        return args, kwargs

    def post(module: nn.Module, args: Any, output: Any) -> Any:
        if mut.disabled:
            return None
        if isinstance(output, torch.Tensor):
            return _swap01(output)
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            first = _swap01(output[0])
            if isinstance(output, tuple) and hasattr(output, "_fields"):
                return type(output)(first, *output[1:])
            return type(output)([first, *output[1:]])
        if isinstance(output, dict) and output:  # ModelOutput: its first field
            key = next(iter(output))
            return _map_tensors(output, lambda t: _swap01(t) if t is output[key] else t)
        return None

    def apply(module: nn.Module, opt: torch.optim.Optimizer) -> str:
        mut.hook(module.register_forward_pre_hook(pre, with_kwargs=True))
        mut.hook(module.register_forward_hook(post))
        return f"dims 0/1 of {mut.target!r}'s first input and output swapped"

    _module_op(mut, apply)


# ---------------------------------------------------------------- softmax / attention / masks
def _softmax_dim(x: torch.Tensor, dim: Any) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, str) or x.ndim == 0:
        return None
    return dim % x.ndim


def _causal_blocked(blocked: torch.Tensor, offset: int = 0) -> bool:
    """Whether every (L, S) slice of ``blocked`` masks all of j > i + offset (and not all)."""
    if blocked.ndim < 2:
        return False
    L, S = blocked.shape[-2:]
    if S < 2 or L < 1:
        return False
    i = torch.arange(L, device=blocked.device)[:, None]
    j = torch.arange(S, device=blocked.device)[None, :]
    upper = j > i + offset
    if not bool(upper.any()):
        return False
    return bool((blocked | ~upper).all()) and not bool(blocked.all())


def _superdiag(like: torch.Tensor) -> torch.Tensor:
    L, S = like.shape[-2:]
    i = torch.arange(L, device=like.device)[:, None]
    j = torch.arange(S, device=like.device)[None, :]
    return j == i + 1


def _unmask_next_bool(blocked: torch.Tensor) -> torch.Tensor:
    """A blocked (True = masked) bool mask with (i, i+1) unmasked."""
    return blocked & ~_superdiag(blocked)


def _drop_in_scores(mut: Mutation, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Masked entries (<= -1e4) take the minimum of their row's unmasked entries."""
    blocked = x <= MASKED
    if not bool(blocked.any()):
        return x
    lo = torch.where(blocked, torch.full_like(x, math.inf), x).amin(dim, keepdim=True)
    fill = blocked & torch.isfinite(lo)
    if not bool(fill.any()):
        return x
    mut.took_effect("masked softmax-input entries unmasked")
    return torch.where(fill, lo.expand_as(x), x)


def _shift_in_scores(mut: Mutation, x: torch.Tensor) -> torch.Tensor:
    """A causal pattern of masked entries (all j > i) gets (i, i+1) unmasked, scored like
    (i, i)."""
    blocked = x <= MASKED
    if not _causal_blocked(blocked):
        return x
    L, S = x.shape[-2:]
    sup = _superdiag(x) & blocked
    diag = torch.diagonal(x, dim1=-2, dim2=-1)  # (..., min(L, S))
    n = min(L, S)
    col = diag.unsqueeze(-1)  # (..., n, 1): row i's diagonal score
    if n < L:
        col = torch.cat([col, col.new_zeros(*col.shape[:-2], L - n, 1)], dim=-2)
    mut.took_effect("causal pattern of the softmax input shifted by one")
    return torch.where(sup, col.expand_as(x), x)


def _mutate_softmax_call(mut: Mutation, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                         ) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x, args, kwargs
    raw = kwargs["dim"] if "dim" in kwargs else (args[0] if args else None)
    dim = _softmax_dim(x, raw)
    if raw is None and x.ndim > 0:  # F.softmax's implicit dim
        dim = 0 if x.ndim in (0, 1, 3) else 1
    op = mut.op
    if op == "softmax_scale":
        mut.took_effect(f"softmax input x {mut.factor:g}")
        x = x * mut.factor
    elif op == "softmax_axis":
        if dim is None or x.ndim < 2:
            return x, args, kwargs
        new = x.ndim - 2 if dim == x.ndim - 1 else x.ndim - 1
        mut.took_effect(f"softmax over dim {new - x.ndim} instead of {dim - x.ndim}")
        if "dim" in kwargs or not args:
            kwargs = {**kwargs, "dim": new}
        else:
            args = (new, *args[1:])
    elif op == "mask_drop":
        if dim is not None:
            x = _drop_in_scores(mut, x, dim)
    elif op == "mask_shift" and dim is not None and x.ndim >= 2 and dim == x.ndim - 1:
        x = _shift_in_scores(mut, x)
    return x, args, kwargs


def _sdpa_by_hand(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attn_mask: Any, dropout_p: float, is_causal: bool, scale: Any,
                  enable_gqa: bool, softmax: Callable[..., torch.Tensor], dim: int
                  ) -> torch.Tensor:
    L, S = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa and key.ndim >= 3 and query.size(-3) != key.size(-3):
        rep = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(rep, dim=-3)
        value = value.repeat_interleave(rep, dim=-3)
    scores = query @ key.transpose(-2, -1) * scale
    low = torch.finfo(scores.dtype).min
    if is_causal:
        allowed = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, low)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, low)
        else:
            scores = scores + attn_mask
    weights = softmax(scores, dim=dim)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return weights @ value


def _attention_flags(mut: Mutation) -> None:
    """The four softmax/mask operators: patches active only inside the target's forward."""

    def active(frame: Any) -> bool:
        return mut.active > 0 and not mut.skip(frame)

    def wrap_softmax(original: Any) -> Any:
        def softmax(input: Any, *args: Any, **kwargs: Any) -> Any:
            if not active(sys._getframe(1)):
                return original(input, *args, **kwargs)
            with passthrough():
                input, args, kwargs = _mutate_softmax_call(mut, input, args, kwargs)
                return original(input, *args, **kwargs)

        return softmax

    def wrap_sdpa(original: Any) -> Any:
        def sdpa(query: Any, key: Any, value: Any, attn_mask: Any = None,
                 dropout_p: float = 0.0, is_causal: bool = False, scale: Any = None,
                 **kw: Any) -> Any:
            if not active(sys._getframe(1)):
                return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                is_causal=is_causal, scale=scale, **kw)
            op = mut.op
            with passthrough():
                if op == "softmax_scale":
                    base = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
                    scale = base * mut.factor
                    mut.took_effect(f"SDPA scale x {mut.factor:g}")
                elif op == "softmax_axis":
                    mut.took_effect("SDPA computed with softmax over dim -2")
                    return _sdpa_by_hand(query, key, value, attn_mask, dropout_p,
                                         bool(is_causal), scale, bool(kw.get("enable_gqa")),
                                         F.softmax, -2)
                elif op == "mask_drop":
                    if attn_mask is not None or is_causal:
                        mut.took_effect("SDPA attn_mask / is_causal dropped")
                    attn_mask, is_causal = None, False
                elif op == "mask_shift":
                    attn_mask, is_causal = _shift_sdpa_mask(mut, query, key, attn_mask,
                                                            bool(is_causal))
                return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                is_causal=is_causal, scale=scale, **kw)

        return sdpa

    def wrap_masked_fill(original: Any, inplace: bool) -> Any:
        def masked_fill(self: Any, mask: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
            if (not active(sys._getframe(1)) or not isinstance(mask, torch.Tensor)
                    or not _is_masking_value(value)):
                return original(self, mask, value, *args, **kwargs)
            with passthrough():
                if mut.op == "mask_drop":
                    mut.took_effect(f"masked_fill(mask, {float(value):g}) skipped")
                    return self if inplace else self.clone()
                blocked = mask.bool()
                if _causal_blocked(blocked):
                    mut.took_effect("causal masked_fill mask shifted by one")
                    mask = _unmask_next_bool(blocked)
                return original(self, mask, value, *args, **kwargs)

        return masked_fill

    mut.patch(torch, "softmax", wrap_softmax)
    mut.patch(F, "softmax", wrap_softmax)
    mut.patch(torch.Tensor, "softmax", wrap_softmax)
    mut.patch(F, "scaled_dot_product_attention", wrap_sdpa)
    if mut.op in ("mask_drop", "mask_shift"):
        mut.patch(torch.Tensor, "masked_fill", lambda o: wrap_masked_fill(o, False))
        mut.patch(torch.Tensor, "masked_fill_", lambda o: wrap_masked_fill(o, True))
        mut.patch(torch, "masked_fill", lambda o: wrap_masked_fill(o, False))

    def pre(module: nn.Module, args: Any) -> None:
        if not mut.disabled:
            mut.ensure_patches()
            mut.active += 1

    def post(module: nn.Module, args: Any, output: Any) -> None:
        mut.active = max(0, mut.active - 1)

    def apply(module: nn.Module, opt: torch.optim.Optimizer) -> str:
        mut.hook(module.register_forward_pre_hook(pre))
        mut.hook(module.register_forward_hook(post, always_call=True))
        return f"{mut.op} active inside {mut.target!r} ({type(module).__name__})'s forward"

    _module_op(mut, apply)


def _is_masking_value(value: Any) -> bool:
    try:
        v = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        return False
    return v <= MASKED


def _shift_sdpa_mask(mut: Mutation, query: torch.Tensor, key: torch.Tensor, attn_mask: Any,
                     is_causal: bool) -> tuple[Any, bool]:
    L, S = query.size(-2), key.size(-2)
    if attn_mask is None:
        if not is_causal:
            return None, False
        mut.took_effect("SDPA is_causal replaced by a mask letting t see t+1")
        allowed = torch.ones(L, S, dtype=torch.bool, device=query.device).tril(diagonal=1)
        return allowed, False
    if attn_mask.dtype == torch.bool:
        blocked = ~attn_mask
        if _causal_blocked(blocked):
            mut.took_effect("SDPA causal bool mask shifted by one")
            return ~_unmask_next_bool(blocked), is_causal
        return attn_mask, is_causal
    blocked = attn_mask <= MASKED
    if _causal_blocked(blocked):
        mut.took_effect("SDPA causal additive mask shifted by one")
        zero = torch.zeros((), dtype=attn_mask.dtype, device=attn_mask.device)
        return torch.where(_superdiag(attn_mask) & blocked, zero, attn_mask), is_causal
    return attn_mask, is_causal


softmax_scale = _attention_flags
softmax_axis = _attention_flags
mask_drop = _attention_flags
mask_shift = _attention_flags


# ==================================================================== run operators
def lr_global(mut: Mutation) -> None:
    def before(opt: torch.optim.Optimizer, groups: list[dict[str, Any]],
               defaults: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if defaults.get("lr") is None and any("lr" not in g for g in groups):
            raise MutationError(f"{type(opt).__name__} has no learning rate ('lr') to scale")
        if defaults.get("lr") is not None:
            defaults = {**defaults, "lr": defaults["lr"] * mut.factor}
        groups = [{**g, "lr": g["lr"] * mut.factor} if "lr" in g else g for g in groups]
        return groups, defaults

    def after(opt: torch.optim.Optimizer) -> None:
        lrs = ", ".join(f"{float(g['lr']):.3g}" for g in opt.param_groups)
        mut.took_effect("learning rates scaled")
        mut.log(f"applied lr_global: {type(opt).__name__} LR x {mut.factor:g} -> [{lrs}]")
        mut.applied = True

    _optimizer_hook(mut, before, after, every=True)


def no_clip(mut: Mutation) -> None:
    import torch.nn.utils.clip_grad as clip_mod

    def total_norm(parameters: Any, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                   foreach: Any = None) -> torch.Tensor:
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.tensor(0.0)
        with passthrough():
            return torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite, foreach)

    def wrap_norm(original: Any) -> Any:
        def clip_grad_norm_(parameters: Any, max_norm: float = 1.0, norm_type: float = 2.0,
                            error_if_nonfinite: bool = False, foreach: Any = None) -> Any:
            if mut.skip(sys._getframe(1)):
                return original(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
            mut.mark_applied("clip_grad_norm_ skipped (returns the total norm)")
            mut.took_effect("clip_grad_norm_ skipped")
            return total_norm(parameters, norm_type, error_if_nonfinite, foreach)

        return clip_grad_norm_

    def wrap_value(original: Any) -> Any:
        def clip_grad_value_(parameters: Any, clip_value: float, foreach: Any = None) -> None:
            if mut.skip(sys._getframe(1)):
                return original(parameters, clip_value, foreach)
            mut.mark_applied("clip_grad_value_ skipped")
            mut.took_effect("clip_grad_value_ skipped")
            return None

        return clip_grad_value_

    def wrap_with_norm(original: Any) -> Any:
        def clip_grads_with_norm_(parameters: Any, max_norm: float, total_norm: Any,
                                  foreach: Any = None) -> None:
            if mut.skip(sys._getframe(1)):
                return original(parameters, max_norm, total_norm, foreach)
            mut.mark_applied("clip_grads_with_norm_ skipped")
            return None

        return clip_grads_with_norm_

    for owner in (torch.nn.utils, clip_mod):
        mut.patch(owner, "clip_grad_norm_", wrap_norm)
        mut.patch(owner, "clip_grad_value_", wrap_value)
        if hasattr(owner, "clip_grads_with_norm_"):
            mut.patch(owner, "clip_grads_with_norm_", wrap_with_norm)
        if hasattr(owner, "clip_grad_norm"):
            mut.patch(owner, "clip_grad_norm", wrap_norm)


def no_zero_grad(mut: Mutation) -> None:
    def wrap(original: Any) -> Any:
        def zero_grad(self: Any, *args: Any, **kwargs: Any) -> None:
            if mut.skip(sys._getframe(1)):
                return original(self, *args, **kwargs)
            mut.mark_applied(f"{type(self).__name__}.zero_grad skipped")
            mut.took_effect("zero_grad skipped")
            return None

        return zero_grad

    mut.patch(torch.optim.Optimizer, "zero_grad", wrap)
    mut.patch(nn.Module, "zero_grad", wrap)
    # optimizers that define their own zero_grad
    stack = list(torch.optim.Optimizer.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if "zero_grad" in cls.__dict__:
            mut.patch(cls, "zero_grad", wrap)


def _ce_loss_patch(mut: Mutation, change: Callable[..., tuple[Any, Any]], what: str) -> None:
    def wrap(original: Any) -> Any:
        def cross_entropy(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            if (mut.skip(sys._getframe(1)) or not torch.is_grad_enabled()
                    or not isinstance(input, torch.Tensor)):
                return original(input, target, *args, **kwargs)
            with passthrough():
                input, target = change(input, target, args, kwargs)
                mut.mark_applied(what)
                mut.took_effect(what)
                return original(input, target, *args, **kwargs)

        return cross_entropy

    mut.patch(F, "cross_entropy", wrap)


def label_noise(mut: Mutation) -> None:
    gen = torch.Generator().manual_seed(int(mut.seed))

    def change(input: torch.Tensor, target: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> tuple[Any, Any]:
        if not isinstance(target, torch.Tensor):
            return input, target
        classes = input.shape[1] if input.ndim >= 2 else input.shape[0]
        if target.is_floating_point():  # class probabilities: rows become random one-hots
            cdim = 1 if input.ndim >= 2 else 0
            moved = target.movedim(cdim, -1)
            rows = moved.reshape(-1, classes)
            pick = torch.rand(rows.shape[0], generator=gen) < mut.factor
            new = torch.randint(0, classes, (rows.shape[0],), generator=gen)
            onehot = F.one_hot(new, classes).to(rows.dtype)
            rows = torch.where(pick.to(rows.device)[:, None], onehot.to(rows.device), rows)
            return input, rows.reshape(moved.shape).movedim(-1, cdim)
        ignore = kwargs.get("ignore_index", args[2] if len(args) > 2 else -100)
        pick = torch.rand(target.shape, generator=gen) < mut.factor
        new = torch.randint(0, classes, target.shape, generator=gen, dtype=target.dtype)
        pick = pick.to(target.device) & (target != ignore)
        return input, torch.where(pick, new.to(target.device), target)

    _ce_loss_patch(mut, change, f"F.cross_entropy targets noised at rate {mut.factor:g} "
                                "(while grad is enabled)")


def probs_into_loss(mut: Mutation) -> None:
    def change(input: torch.Tensor, target: Any, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> tuple[Any, Any]:
        return input.softmax(dim=1 if input.ndim >= 2 else 0), target

    _ce_loss_patch(mut, change, "F.cross_entropy fed softmax(input) (while grad is enabled)")


OPERATORS: dict[str, Callable[[Mutation], None]] = {
    "lr_up": lr_up,
    "init_scale": init_scale,
    "init_mean": init_mean,
    "freeze": freeze,
    "detach": detach,
    "skip_norm": skip_norm,
    "softmax_scale": softmax_scale,
    "softmax_axis": softmax_axis,
    "mask_drop": mask_drop,
    "mask_shift": mask_shift,
    "batch_mix": batch_mix,
    "lr_global": lr_global,
    "no_clip": no_clip,
    "no_zero_grad": no_zero_grad,
    "label_noise": label_noise,
    "probs_into_loss": probs_into_loss,
}
