"""DDP under torchrun (gloo, 2 CPU processes): one report, by rank 0, with every rank's facts.

The torchrun tests run the real launcher (``python -m torch.distributed.run``) on
``tests/scripts/ddp_train.py``; the others check the pieces in one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hfault import ExitCode
from hfault.capture.distributed import World
from hfault.report.model import Report, RunInfo
from hfault.report.ranks import merge_ranks
from tests.conftest import ROOT, SCRIPTS, validate

SCRIPT = SCRIPTS / "ddp_train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(tmp_path: Path, *args: str,
             script_args: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str],
                                                          dict[str, Any] | None]:
    """``torchrun --nproc_per_node=2 -m hfault diagnose ddp_train.py --json ... ARGS``."""
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", "-m", "hfault", "diagnose", str(SCRIPT),
           "--json", str(report_path), *args, "--", "--steps", "6", *script_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    report = None
    if report_path.exists():
        report = json.loads(report_path.read_text())
        validate(report)
    return proc, report


@pytest.mark.e2e
def test_torchrun_one_report_by_rank_0_localizes_a_rank_1_nan(tmp_path):
    proc, report = torchrun(
        tmp_path, "--sarif", str(tmp_path / "r.sarif"), "--html", str(tmp_path / "r.html"),
        "--fail-on", "never", script_args=("--nan-rank", "1", "--bad-step", "3"))
    assert proc.returncode == 0, proc.stderr  # every rank exited 0
    assert report is not None
    # One report: printed once, every file written once (by rank 0), one line from rank 1.
    assert proc.stdout.count("hfault report") == 1
    for written in ("JSON report written", "SARIF written", "HTML report written"):
        assert proc.stderr.count(written) == 1, proc.stderr
    assert proc.stderr.count("hfault: rank 1 of 2: completed; the report is rank 0's") == 1
    # the facts line wraps inside the report's panel: its borders are not text
    assert "rank 0 of 2 (torchrun)" in " ".join(proc.stdout.replace("│", " ").split())
    run = report["run"]
    assert (run["world_size"], run["rank"], run["ranks_via"]) == (2, 0, "process group")
    assert [(r["rank"], r["status"], r["steps"]) for r in run["ranks"]] == [
        (0, "completed", 6), (1, "completed", 6)]
    # DDP wraps the model as `module`: the names are the model's own.
    assert [c["name"] for c in report["components"]] == ["fc1", "fc2"]
    # Rank 0 alone sees the NaN only in its gradients (DDP's all-reduce brought it); where it
    # was born is rank 1's forward.
    own = [e for e in report["numerics"] if e["rank"] == 0]
    assert own[0]["kind"] == "gradient" and own[0]["step"] == 3
    assert {"kind": "activation", "step": 3, "where": "temp", "rank": 1}.items() <= next(
        e for e in report["numerics"] if e["rank"] == 1).items()
    top = report["findings"][0]
    assert (top["rule"], top["component"], top["step"]) == ("HF001", "temp", 3)
    assert top["message"].endswith("in the output of module temp on rank 1")


@pytest.mark.e2e
def test_torchrun_after_the_script_destroyed_its_group_ranks_hand_over_through_files(tmp_path):
    proc, report = torchrun(tmp_path, "--quiet", "--fail-on", "never",
                            script_args=("--nan-rank", "1", "--destroy"))
    assert proc.returncode == 0, proc.stderr
    assert report is not None
    assert "hfault report" not in proc.stdout and "rank 1 of 2" not in proc.stderr  # --quiet
    assert report["run"]["ranks_via"] == "files"
    assert [r["status"] for r in report["run"]["ranks"]] == ["completed", "completed"]
    assert report["findings"][0]["message"].endswith("output of module temp on rank 1")


@pytest.mark.e2e
def test_torchrun_rank_0_reports_when_rank_1_crashes_alone(tmp_path):
    # Rank 1 raises before its forward of step 3 while rank 0 waits in DDP's all-reduce. Rank 0's
    # all-reduce fails when rank 1's process ends, and its script lingers in a `finally` (a slow
    # checkpoint save); torchrun stops it there with SIGTERM, which must end rank 0's run, not
    # its report.
    proc, report = torchrun(tmp_path, script_args=("--crash-rank", "1", "--bad-step", "3",
                                                   "--linger", "5"))
    assert proc.returncode != 0
    assert report is not None, proc.stderr
    assert report["run"]["rank"] == 0
    assert report["summary"]["verdict"] == "crashed"
    ranks = report["run"]["ranks"]
    assert ranks[1]["status"] == "crashed" and ranks[1]["error"]["type"] == "ValueError"
    assert "rank 1 crashed: ValueError: corrupt shard on rank 1" in " ".join(report["notes"])
    # Rank 1 says so in its own line, rank 0 (exit 3: the run crashed) in its error line.
    assert proc.stderr.count("hfault: error: rank 1: the script raised ValueError") == 2


def test_fsdp_is_refused_with_one_line(cli):
    # FSDP2 runs on CPU; one process of a "torchrun" world of 1, launched by hand.
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    result = cli("diagnose", str(SCRIPT), "--", "--steps", "2", "--fsdp", env=env)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.report is None
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(
        "hfault: error: FSDP / DTensor (sharded parameters) is not supported"), result.stderr


def test_verify_fix_is_refused_under_torchrun(cli):
    env = {"RANK": "0", "WORLD_SIZE": "2"}
    result = cli("diagnose", str(SCRIPT), "--verify-fix", env=env)
    assert result.returncode == ExitCode.USAGE
    assert "--verify-fix reruns the script in this process" in result.stderr


def test_world_from_the_torchrun_environment():
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
           "TORCHELASTIC_RUN_ID": "job/7", "TORCHELASTIC_RESTART_COUNT": "1"}
    world = World.from_env(env)
    assert world is not None
    assert (world.rank, world.size, world.local_size, world.lead) == (1, 4, 2, False)
    assert world.run_key.startswith("job_7-1-")  # a file name: no "/"
    assert World.from_env({}) is None
    assert World.from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert World.from_env({"RANK": "x", "WORLD_SIZE": "2"}) is None


def test_ranks_hand_over_through_files_without_a_process_group(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    lead, other = World(0, 2, 2, "test-run"), World(1, 2, 2, "test-run")
    assert other.gather({"rank": 1, "status": "crashed"}, crashed=True) is None
    got = lead.gather({"rank": 0, "status": "completed"}, crashed=False)
    assert got == [{"rank": 0, "status": "completed"}, {"rank": 1, "status": "crashed"}]
    assert lead.channel == "files"
    lead.cleanup()
    assert not lead.folder.exists()


def _report(numerics: list[dict[str, Any]]) -> Report:
    run = RunInfo("train.py", [], "completed", None, 5, 1.0, "cpu", "2", "3.11")
    return Report(run, [], [], [(5, 0.5)], [], numerics=numerics)


def test_merge_orders_events_by_step_kind_and_rank_and_names_missing_ranks():
    report = _report([{"kind": "gradient", "step": 3, "where": "fc", "value": "nan"}])
    world = World(0, 3, 3, "k", channel="files")
    gathered = [
        {"rank": 0, "status": "completed", "steps": 5, "numerics": []},
        {"rank": 2, "status": "crashed", "steps": 2,
         "error": {"type": "ValueError", "message": "bad", "file": "t.py", "line": 9},
         "numerics": [{"kind": "activation", "step": 3, "where": "temp", "value": "inf"}]},
    ]
    merge_ranks(report, world, gathered)
    assert [(e["rank"], e["kind"]) for e in report.numerics] == [(2, "activation"),
                                                                  (0, "gradient")]
    assert [r["status"] for r in report.run.ranks or []] == ["completed", None, "crashed"]
    assert report.notes == [
        "rank 2 crashed: ValueError: bad at t.py:9",
        "rank(s) 1 of 3 sent nothing: they did not get to the end of their run in time; this "
        "report lacks their facts",
    ]
    data = report.to_dict()
    validate(data)  # a rank that sent nothing: status null
    assert (data["run"]["world_size"], data["run"]["rank"]) == (3, 0)
    assert data["summary"]["verdict"] == "crashed"  # rank 2 crashed
    assert "world_size" not in _report([]).to_dict()["run"]  # a single process: unchanged
