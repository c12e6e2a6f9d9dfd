"""The code a ``lower_lr`` fix shows: the flagged parameters split out of the param group that
holds them in the optimizer the script already built.

Rebuilding the optimizer with one group for "the rest" would drop what the script set per group
(nanoGPT's decay and no-decay groups) and freeze the scheduled learning rate of the moment as a
constant. The split instead runs right after the optimizer is built, copies every setting of the
group it leaves (weight decay, betas, ...) and multiplies that group's own learning rate, so a
scheduler, or a loop that scales each group, keeps its shape.

Where it goes comes from the optimizer construction the report saw (``run.optimizers[i].source``):
the statement there is read (when the file is readable) for the variable it assigns and the
function around it, and the variant follows from what the code shows: a plain script, a
``configure_optimizers`` method (Lightning, nanoGPT), or a transformers ``Trainer``.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

VARIANTS = ("script", "method", "trainer")
"""``script``: paste after the construction; ``method``: the same inside a method whose ``self``
is the model (``configure_optimizers``); ``trainer``: a ``Trainer`` subclass whose
``create_optimizer`` splits the optimizer the Trainer builds."""


@dataclass(frozen=True)
class OptimizerSite:
    """Where the script builds the optimizer, as far as its source shows."""

    file: str | None = None
    line: int | None = None
    end_line: int | None = None
    """Last line of the statement that builds it (the call may span lines)."""
    target: str | None = None
    """The name it is assigned to (``optimizer``, ``self.opt``), None when not assigned."""
    returned: bool = False
    """Whether the statement returns it (``return torch.optim.AdamW(...)``)."""
    function: str | None = None
    self_is_model: bool = False
    """Whether the enclosing function is a method named ``configure_optimizers``."""
    trainer: bool = False
    """Whether a transformers ``Trainer`` builds it (its source is the library, the script makes
    a ``Trainer(``)."""
    param_groups: int | None = None
    optimizer_class: str = "optimizer"


def read_site(optimizer: Mapping[str, Any], script: str | None = None) -> OptimizerSite:
    """The construction site of a report's optimizer record (``run.optimizers[i]``)."""
    source = optimizer.get("source") or {}
    file, line = source.get("file"), source.get("line")
    groups = optimizer.get("param_groups")
    base = OptimizerSite(
        file=file, line=line if isinstance(line, int) else None,
        param_groups=groups if isinstance(groups, int) else None,
        optimizer_class=str(optimizer.get("class") or "optimizer"))
    text = _read(file)
    script_text = _read(script) if script and script != file else text
    in_library = bool(file) and ("site-packages" in str(file) or "transformers" in Path(
        str(file)).parts)
    trainer = in_library and "Trainer(" in (script_text or "")
    if in_library:  # built inside a library: its line is no place to paste
        return replace(base, file=None, line=None, trainer=trainer)
    if text is None or base.line is None:
        return base
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return base
    stmt, function = _statement_at(tree, base.line)
    if stmt is None:
        return base
    target = None
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        first = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
        if isinstance(first, (ast.Name, ast.Attribute)):
            target = ast.unparse(first)
    method = function is not None and function.args.args[:1] != [] and \
        function.args.args[0].arg == "self"
    return replace(
        base, end_line=stmt.end_lineno, target=target, returned=isinstance(stmt, ast.Return),
        function=function.name if function else None,
        self_is_model=method and function is not None
        and function.name == "configure_optimizers",
        trainer=trainer)


def param_group_snippet(component: Mapping[str, Any], factor: float,
                        site: OptimizerSite | None = None) -> str:
    """Python that moves ``component``'s parameters into their own param group with the learning
    rate of the group they leave × ``factor``, in the optimizer ``site`` builds.

    ``component`` is a report component (``Component.to_dict()``): fixes are built from report
    data so that a saved report can be re-judged."""
    site = site or OptimizerSite()
    variant = snippet_variant(site)
    model, optimizer = {"trainer": ("self.model", "optimizer"),
                        "method": ("self", site.target or "optimizer")}.get(
        variant, ("model", site.target or "optimizer"))
    access = param_access(component)
    access = re.sub(r"(?<![\w.'\"])model\b", model, access)  # not inside a quoted name
    head = _where(site, variant, optimizer)
    fused = ""
    if any("[" in p for p in component.get("parameters", [])):
        fused = (f"# {component['name']} is a slice of a fused tensor: param groups cannot split "
                 "it,\n# so the whole fused tensor gets the lower learning rate.\n")
    body = split_code(access, optimizer, factor)
    if variant == "trainer":
        inner = "\n".join(("        " + line) if line else "" for line in body.splitlines())
        return (f"{head}{fused}class SplitTrainer(Trainer):\n"
                "    def create_optimizer(self):\n"
                "        optimizer = super().create_optimizer()\n"
                f"{inner}\n"
                "        return optimizer\n")
    tail = ""
    if site.returned:
        tail = f"return {optimizer}\n"
    return f"{head}{fused}{body}\n{tail}"


HAND_WRITTEN = "HandWrittenUpdate"
"""``run.optimizers[i].class`` of a script's own update (``capture.manual_steps``)."""


def hand_written_snippet(component: Mapping[str, Any], factor: float) -> str:
    """A per-component rate in a loop that updates the parameters itself: no param group to
    split, the update line takes the factor."""
    access = param_access(component)
    f = f"{factor:.3g}"
    return (
        "# The script updates its parameters itself: give these their own, lower step where it\n"
        "# does (the same for `W -= lr * W.grad` loops).\n"
        f"slow = {{id(p) for p in {access}}}\n"
        "for p in model.parameters():\n"
        f"    p.data.add_(p.grad, alpha=-lr * ({f} if id(p) in slow else 1.0))\n"
    )


def param_access(component: Mapping[str, Any]) -> str:
    """A Python expression for a component's parameters (from ``model``): the one the report
    recorded, else the module's by its path."""
    return component.get("access") or _module_access(component)


def _module_access(component: Mapping[str, Any]) -> str:
    """The parameters of a component without an ``access`` expression: a module's by its path;
    a tensor no module owns and no variable names (``<unowned>.param0``) has no path, so the
    snippet asks for the tensor itself."""
    name = component["name"]
    if component.get("module_type") == "Parameter":
        return f"[tensor]  # tensor: the one hfault calls {name} (no module or variable names it)"
    return f'list(model.get_submodule("{name}").parameters())'


def snippet_variant(site: OptimizerSite) -> str:
    """Which of :data:`VARIANTS` fits the site."""
    if site.trainer:
        return "trainer"
    return "method" if site.self_is_model else "script"


def split_code(access: str, optimizer: str, factor: float) -> str:
    """The split itself: every group holding a flagged parameter loses it to a copy of itself
    (same settings) whose ``lr`` is × ``factor``; a group made of flagged parameters only is
    scaled in place (no empty group). ``lr_scale`` records the factor for loops that assign
    ``lr`` themselves; ``initial_lr`` (set by a scheduler) is scaled with ``lr``."""
    f = f"{factor:.3g}"
    return (
        f"flagged = {{id(p) for p in {access}}}\n"
        f"for group in list({optimizer}.param_groups):\n"
        '    moved = [p for p in group["params"] if id(p) in flagged]\n'
        "    if not moved:\n"
        "        continue\n"
        "    split = group\n"
        '    if len(moved) < len(group["params"]):  # a copy: same weight decay, betas, ...\n'
        '        group["params"] = [p for p in group["params"] if id(p) not in flagged]\n'
        '        split = {**group, "params": moved}\n'
        f"        {optimizer}.add_param_group(split)\n"
        f'    split["lr"] = split["lr"] * {f}  # × the group\'s own: schedules keep their shape\n'
        f'    split["lr_scale"] = split.get("lr_scale", 1.0) * {f}\n'
        '    if "initial_lr" in split:\n'
        f'        split["initial_lr"] = split["initial_lr"] * {f}'
    )


def _where(site: OptimizerSite, variant: str, optimizer: str) -> str:
    """The comment saying where the code goes and what a loop setting ``lr`` must change."""
    paragraphs = []
    if variant == "trainer":
        paragraphs.append(
            "transformers' Trainer builds the optimizer: use SplitTrainer(...) where the script "
            "makes Trainer(...) (or build the optimizer, split it as below and pass "
            "Trainer(..., optimizers=(optimizer, None))).")
    else:
        built, at = "the statement that builds the optimizer", ""
        if site.file and site.line:
            lines = (f"line {site.line}" if not site.end_line or site.end_line == site.line
                     else f"lines {site.line}-{site.end_line}")
            at = f"{lines} of {site.file}"
            built = f"{at}, where the optimizer is built"
        if site.returned:
            text = (f"Where the optimizer is returned ({at or 'its construction'}), assign it to "
                    f"{optimizer} instead, then paste this right after, before the first step")
        else:
            text = f"Paste right after {built}, before the first step"
        if variant == "method":
            text += f", inside {site.function} (its self is the model)"
        paragraphs.append(text + ".")
    if site.param_groups and site.param_groups > 1:
        paragraphs.append(f"The optimizer has {site.param_groups} param groups: the flagged "
                          "parameters leave whichever holds them and keep its settings.")
    paragraphs.append('A loop that assigns group["lr"] = lr each step must keep the factor: '
                      'group["lr"] = lr * group.get("lr_scale", 1.0).')
    return "".join(textwrap.fill(p, 96, initial_indent="# ", subsequent_indent="# ",
                                 break_long_words=False, break_on_hyphens=False) + "\n"
                   for p in paragraphs)


def _statement_at(tree: ast.AST, line: int
                  ) -> tuple[ast.stmt | None, ast.FunctionDef | ast.AsyncFunctionDef | None]:
    """The innermost simple statement spanning ``line``, and the function around it."""
    best: tuple[ast.stmt | None, ast.FunctionDef | ast.AsyncFunctionDef | None] = (None, None)

    def visit(node: ast.AST, function: ast.FunctionDef | ast.AsyncFunctionDef | None) -> None:
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.stmt):
                continue
            end = child.end_lineno or child.lineno
            if not child.lineno <= line <= end:
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child)
            elif isinstance(child, (ast.Assign, ast.AnnAssign, ast.Return, ast.Expr)):
                best = (child, function)
            else:
                visit(child, function)

    visit(tree, None)
    return best


def _read(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
