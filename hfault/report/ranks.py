"""A torchrun run's other ranks in rank 0's report: what each rank hands over, and the merge.

Each rank measures its own model and batches, so rank 0's metrics, snapshots and curvature are
rank 0's own. What can differ between ranks and matters for localization is merged: how each
rank's run ended (``run.ranks``) and where each first saw a NaN/Inf (``numerics[]`` with its
``rank``): a NaN born in rank 1's forward reaches rank 0 only through DDP's gradient all-reduce,
so rank 0 alone would blame a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hfault.numbers import encode

if TYPE_CHECKING:
    from hfault.capture.distributed import World
    from hfault.report.model import Report


def rank_facts(report: Report, rank: int) -> dict[str, Any]:
    """What a rank hands rank 0 (JSON-able)."""
    run = report.run
    error = run.error or {}
    last = report.losses[-1][1] if report.losses else None
    return {
        "rank": rank,
        "status": run.status,
        "steps": run.steps,
        "loss": encode(last),
        "error": {k: error.get(k) for k in ("type", "message", "file", "line")} if error else None,
        "exit_code": run.exit_code,
        "numerics": [dict(e) for e in report.numerics],
    }


def merge_ranks(report: Report, world: World, gathered: Sequence[dict[str, Any]] | None) -> None:
    """Record the world in ``report.run``; on rank 0 (``gathered`` not None) add every rank's
    facts: ``run.ranks``, the other ranks' non-finite events, and notes for ranks that sent
    nothing or ended abnormally."""
    run = report.run
    run.world_size, run.rank = world.size, world.rank
    for event in report.numerics:
        event["rank"] = world.rank
    if gathered is None:
        return
    by_rank = {int(f["rank"]): f for f in gathered if isinstance(f.get("rank"), int)}
    run.ranks, run.ranks_via = [], world.channel
    for rank in range(world.size):
        facts = by_rank.get(rank)
        if facts is None:
            run.ranks.append({"rank": rank, "status": None})
            continue
        entry = {k: facts.get(k) for k in ("rank", "status", "steps", "loss", "error")}
        if facts.get("exit_code") is not None:
            entry["exit_code"] = facts["exit_code"]
        run.ranks.append(entry)
        if rank != world.rank:
            report.numerics.extend({**e, "rank": rank} for e in facts.get("numerics") or [])
            report.notes.extend(_ending_note(rank, facts))
    report.numerics.sort(key=_event_order)
    missing = [r for r in range(world.size) if r not in by_rank]
    if missing:
        why = ("they are on other nodes and the process group was no longer up"
               if world.channel == "files" and min(missing) >= world.local_size
               else "they did not get to the end of their run in time")
        report.notes.append(f"rank(s) {', '.join(map(str, missing))} of {world.size} sent "
                            f"nothing: {why}; this report lacks their facts")
    report.notes.extend(world.problems)


_KINDS = ("activation", "loss", "gradient", "weight")  # where a NaN comes from, first to last


def _event_order(event: dict[str, Any]) -> tuple[int, int, int]:
    kind = event.get("kind")
    return (int(event.get("step") or 0), _KINDS.index(kind) if kind in _KINDS else len(_KINDS),
            int(event.get("rank") or 0))


def _ending_note(rank: int, facts: dict[str, Any]) -> list[str]:
    status, error = facts.get("status"), facts.get("error") or {}
    where = f" at {error.get('file')}:{error.get('line')}" if error.get("file") else ""
    if status == "crashed":
        return [f"rank {rank} crashed: {error.get('type')}: {error.get('message')}{where}"]
    if status == "exited":
        return [f"rank {rank} ended its process with os._exit({facts.get('exit_code')}){where}"]
    return []


def worst_other_rank(run: dict[str, Any]) -> dict[str, Any] | None:
    """The first other rank that crashed, else the first that exited with ``os._exit``, from a
    report's ``run``: rank 0's exit code speaks for the whole run."""
    others = [r for r in run.get("ranks") or [] if r.get("rank") != run.get("rank")]
    for status in ("crashed", "exited"):
        for entry in others:
            if entry.get("status") == status:
                return entry
    return None
