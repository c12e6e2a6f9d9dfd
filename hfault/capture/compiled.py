"""``torch.compile`` and hfault's hooks: what dynamo must not trace, and the compiled wrapper.

Dynamo traces the Python that runs inside a compiled module, the global module hooks it calls
for every submodule and hfault's patched torch functions included. A hook that records into
hfault's state is a side effect dynamo cannot replay (``AssertionError ... already tracked for
mutation``). Two ways out:

- ``torch._dynamo.disable`` on the hooks: dynamo breaks the graph at every module call and runs
  the hook eagerly. Statistics stay complete, but each piece between two modules is compiled
  alone: the script's kernels (fusions) change, so training no longer matches its own compiled
  run bit for bit, and it is slower.
- returning early while dynamo traces (``torch.compiler.is_compiling()`` is a constant then, so
  the hook's body is dead code to it): nothing of hfault enters the graph, which stays the
  script's own, unbroken.

hfault takes the second (:func:`eager_only`, :func:`traced_as_original`). What it costs: hooks do
not run for the modules inside compiled code. The session learns those modules from the compiled
wrapper (:func:`original_module`), which is called outside the graph, or, when no hook of the
model ran at all (``model.compile()``, a compiled function), from the live modules that hold the
optimizers' parameters (:func:`models_compiled_away`); the first-order statistics
come from ``.grad`` at ``optimizer.step()`` and need nothing else. Forward-time probes (the NaN
check of module outputs, attention statistics) see nothing inside compiled code, except on the
curvature's measured steps, which run eagerly (:class:`EagerSteps`).
"""

from __future__ import annotations

import functools
import gc
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import nn

from hfault.capture.delegates import delegate
from hfault.components import find_roots
from hfault.components.names import WRAPPER_SEGMENT

F = TypeVar("F", bound=Callable[..., Any])


def _dynamo_loaded() -> bool:
    """Whether anything can have been compiled: ``torch.compile`` imports dynamo on first use,
    and hfault never imports it itself (a second of import for scripts that do not compile)."""
    return "torch._dynamo.eval_frame" in sys.modules


def eager_only(hook: F) -> F:
    """``hook`` (a global module or optimizer hook) as a no-op while dynamo traces."""

    def eager_hook(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return None
        return hook(*args, **kwargs)

    return eager_hook  # type: ignore[return-value]


def traced_as_original(original: Callable[..., Any], wrapped: Callable[..., Any]
                       ) -> Callable[..., Any]:
    """A patched torch function that dynamo traces as ``original`` and eager code runs as
    ``wrapped`` (a probe's window on it)."""

    @delegate
    def patched(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return original(*args, **kwargs)
        return wrapped(*args, **kwargs)

    # The original's name: torch._inductor, imported while a probe's patch is in place, keys
    # its extern kernels by the name of what it finds at torch.bmm, torch.baddbmm...
    functools.update_wrapper(patched, original, updated=())
    return patched


def is_compiled_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is the ``OptimizedModule`` that ``torch.compile(module)`` returns."""
    if not _dynamo_loaded():
        return False
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(module, OptimizedModule)


def original_module(module: nn.Module) -> nn.Module:
    """The module a compiled wrapper holds (itself for any other module): components are named
    from the script's model, never ``_orig_mod.fc1``."""
    while is_compiled_wrapper(module):
        module = getattr(module, WRAPPER_SEGMENT)
    return module


def _compiled_anything() -> bool:
    """Whether dynamo compiled any frame in this process (transformers and Lightning import
    dynamo without compiling anything)."""
    if not _dynamo_loaded():
        return False
    from torch._dynamo.utils import counters

    return bool(counters["frames"]["ok"])


def models_compiled_away(params: Sequence[torch.Tensor], seen: Sequence[nn.Module]
                         ) -> list[nn.Module]:
    """The models that hold some of ``params`` (the optimizers') when no module in ``seen`` does
    and something was compiled: their forward ran only inside compiled code
    (``torch.compile(train_step)``, ``model.compile()``), where hooks do not run. Found among
    the live modules (one ``gc`` scan, only then), outermost, compiled wrappers replaced by
    their originals."""
    if not params or not _compiled_anything():
        return []
    held = {id(p) for root in find_roots(seen) for p in root.parameters()}
    missing = [p for p in params if id(p) not in held]
    if not missing:
        return []
    wanted = {id(p) for p in missing}
    live: dict[int, nn.Module] = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), nn.Module):  # not isinstance: a dead weakproxy raises
            module = original_module(obj)
            live.setdefault(id(module), module)
    holders = {mid for mid, m in live.items()
               if any(id(p) in wanted for p in m.parameters(recurse=False))}
    # Their ancestors hold them too: the roots are the outermost live modules holding any.
    containing = [m for m in live.values() if any(id(sub) in holders for sub in m.modules())]
    return find_roots(containing, cast("list[nn.Parameter]", missing))


class QuietGlobalHookWarning:
    """Silence the warning ``OptimizedModule`` gives on each call while global module hooks are
    installed (hfault's own: the extra hook call it warns of is handled by
    :func:`original_module`); only that warning, and only while capture runs."""

    MESSAGE = r"Using `torch\.compile\(module\)` when there are global hooks on modules"

    def __init__(self) -> None:
        self._entry: Any = None

    def enter(self) -> None:
        if self._entry is not None:
            return
        warnings.filterwarnings("ignore", message=self.MESSAGE, category=UserWarning)
        self._entry = warnings.filters[0]

    def exit(self) -> None:
        if self._entry is None:
            return
        filters = cast("list[Any]", warnings.filters)  # a list, typed as a Sequence
        if self._entry in filters:
            filters.remove(self._entry)
            getattr(warnings, "_filters_mutated", lambda: None)()
        self._entry = None


class EagerSteps:
    """Run compiled code eagerly between ``enter`` and ``exit`` (``torch.compiler.set_stance(
    "force_eager")``; the previous stance is restored).

    A compiled graph has no double backward, so a curvature measurement, which differentiates
    the step's loss graph twice, needs that step's forward and backward to run on the original
    modules. The compiled code is kept and used again after ``exit``. Eager kernels may round
    differently from compiled ones (inductor's fusions), so on those steps alone training may
    differ from the script's compiled run in the last bits.

    Before the script's first ``torch.compile``, dynamo is not imported (hfault does not import
    it: a second for every script) and nothing is compiled: ``enter`` then only arms, and the
    switch comes when the script calls ``torch.compile`` (:meth:`compiled`), before anything
    compiled runs."""

    def __init__(self) -> None:
        self._stance: Any = None
        self._armed = False

    @property
    def waiting(self) -> bool:
        """Armed, not switched: the caller should tell :meth:`compiled` of ``torch.compile``."""
        return self._armed and self._stance is None

    def enter(self) -> None:
        self._armed = True
        if _dynamo_loaded():
            self._switch()

    def compiled(self) -> None:
        """The script called ``torch.compile``."""
        if self._armed:
            self._switch()

    def exit(self) -> None:
        self._armed = False
        if self._stance is None:
            return
        self._stance.__exit__(None, None, None)
        self._stance = None

    def _switch(self) -> None:
        if self._stance is None:
            self._stance = torch.compiler.set_stance("force_eager")
