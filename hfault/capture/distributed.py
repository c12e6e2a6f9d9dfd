"""Under torchrun: which rank this process is, and one report for the whole run.

Every rank runs the script under its own hooks and measures its own model and batches. At the end
of the run (the script's training is over, hooks removed) each rank hands rank 0 its facts: how
its run ended, its steps and last loss, and where it first saw a NaN/Inf. Rank 0 merges them into
its report (``run.ranks``, ``numerics[].rank``) and is the only rank that prints a report or
writes files; the others print one line.

How the facts travel:

- every rank first writes them to a small file in a temporary folder named after the torchrun
  run (run id, restart count, the launcher's pid and start time);
- when the script left its process group initialized and this rank's run did not crash, over
  that group (``gather_object`` to rank 0): the only way that reaches ranks on other nodes;
- otherwise (the script destroyed the group, or this rank crashed: the others may still be inside
  a collective of the training, which another collective would meet out of turn), rank 0 reads
  the files of its node's ranks, waiting for them at most :data:`WAIT_SECONDS`
  (:data:`CRASHED_WAIT_SECONDS` when rank 0 itself crashed: the others are then likely blocked
  waiting for it). Ranks on other nodes are then missing, and the report says so.

torchrun stops the other ranks (SIGTERM, then SIGKILL 30 s later) as soon as one exits non-zero:
``capture.termination`` turns that SIGTERM into the end of the script's run and holds it back
while the report is built, so rank 0 still reports when another rank crashed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WAIT_SECONDS = 30.0
"""How long rank 0 waits for the other ranks' files."""
CRASHED_WAIT_SECONDS = 10.0
"""How long a crashed rank 0 waits for the other ranks' files."""
_POLL_SECONDS = 0.05


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(environ.get(name, ""))
    except ValueError:
        return default


def _group_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _launcher_id() -> str:
    """The launcher (this process's parent): its pid and, where ``/proc`` says it, its start
    time, so a reused pid never meets an old run's files (the run id is ``none`` unless torchrun
    is given one)."""
    ppid = os.getppid()
    try:
        start = Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return str(ppid)
    return f"{ppid}.{start}"


@dataclass
class World:
    """This process's place in a torchrun run of several processes."""

    rank: int
    size: int
    local_size: int
    """Ranks on this node (``LOCAL_WORLD_SIZE``): rank 0's node holds ranks 0 .. local_size-1."""
    run_key: str
    """Names this run's hand-off folder: torchrun's run id and restart count, the launcher's
    pid and start time."""
    channel: str | None = field(default=None, compare=False)
    """How the facts went: ``process group`` or ``files`` (set by :meth:`gather`)."""
    problems: list[str] = field(default_factory=list, compare=False)
    """What went wrong gathering (rank 0 notes them in the report)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> World | None:
        """The world torchrun describes in the environment; None for a single process."""
        env = os.environ if environ is None else environ
        size = _env_int(env, "WORLD_SIZE", 1)
        rank = _env_int(env, "RANK", -1)
        if size <= 1 or not 0 <= rank < size:
            return None
        local = min(max(_env_int(env, "LOCAL_WORLD_SIZE", size), 1), size)
        key = "-".join((env.get("TORCHELASTIC_RUN_ID", "run"),
                        env.get("TORCHELASTIC_RESTART_COUNT", "0"), _launcher_id()))
        return cls(rank, size, local, re.sub(r"[^A-Za-z0-9_.-]", "_", key))

    @property
    def lead(self) -> bool:
        """Rank 0: the rank that reports."""
        return self.rank == 0

    @property
    def folder(self) -> Path:
        return Path(tempfile.gettempdir()) / f"hfault-ranks-{self.run_key}"

    def _file(self, rank: int) -> Path:
        return self.folder / f"rank-{rank}.json"

    # ------------------------------------------------------------------ gather
    def gather(self, facts: dict[str, Any], *, crashed: bool) -> list[dict[str, Any]] | None:
        """Hand this rank's ``facts`` (JSON-able) to rank 0. Rank 0 gets every rank's facts it
        could gather, itself included, in rank order; the other ranks get None."""
        self._post(facts)
        if not crashed and _group_initialized():
            try:
                return self._gather_over_group(facts)
            except Exception as exc:  # a broken group: fall back to the files
                self.problems.append(f"gathering over the process group failed "
                                     f"({type(exc).__name__}: {exc}); read the files instead")
        self.channel = "files"
        if not self.lead:
            return None
        return self._collect(CRASHED_WAIT_SECONDS if crashed else WAIT_SECONDS)

    def _gather_over_group(self, facts: dict[str, Any]) -> list[dict[str, Any]] | None:
        import torch.distributed as dist

        received: list[Any] | None = [None] * self.size if self.lead else None
        dist.gather_object(facts, received, dst=0)
        self.channel = "process group"
        if received is None:
            return None
        return [r for r in received if isinstance(r, dict)]

    def _post(self, facts: dict[str, Any]) -> None:
        try:
            self.folder.mkdir(exist_ok=True)
            tmp = self.folder / f".rank-{self.rank}.tmp"
            tmp.write_text(json.dumps(facts))
            os.replace(tmp, self._file(self.rank))
        except OSError as exc:
            self.problems.append(f"rank {self.rank} could not write {self.folder}: {exc}")

    def _collect(self, wait: float) -> list[dict[str, Any]]:
        """The local ranks' files, waiting at most ``wait`` seconds for the missing ones."""
        deadline = time.monotonic() + wait
        found: dict[int, dict[str, Any]] = {}
        while True:
            for rank in range(self.local_size):
                if rank not in found:
                    read = self._read(rank)
                    if read is not None:
                        found[rank] = read
            if len(found) == self.local_size or time.monotonic() >= deadline:
                break
            time.sleep(_POLL_SECONDS)
        return [found[r] for r in sorted(found)]

    def _read(self, rank: int) -> dict[str, Any] | None:
        try:
            data = json.loads(self._file(rank).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        """After the gathering: rank 0 removes the hand-off folder; another rank removes its own
        file when rank 0 got its facts over the process group (else rank 0 still reads it)."""
        if self.lead:
            shutil.rmtree(self.folder, ignore_errors=True)
        elif self.channel == "process group":
            self._file(self.rank).unlink(missing_ok=True)
