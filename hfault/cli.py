"""``hfault`` command line. Errors are one line on stderr with a documented exit code
(:class:`hfault.ExitCode`); tracebacks only with ``--traceback``."""

from __future__ import annotations

import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hfault import __version__
from hfault.capture.schedule import ScheduleError, parse_schedule
from hfault.exitcodes import ExitCode
from hfault.report.model import SEVERITY_ORDER

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Localize training faults in PyTorch models to components, with second-order metrics.",
)


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    never = "never"


class Budget(str, Enum):
    economy = "economy"
    standard = "standard"
    thorough = "thorough"


class TraceMethod(str, Enum):
    block = "block"
    shared = "shared"


class UsageFailure(Exception):
    """A usage problem found after option parsing (exit 2)."""


def _err(message: str) -> None:
    print(f"hfault: error: {message}", file=sys.stderr)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        print(f"hfault {__version__}")
        raise typer.Exit(0)


@app.command(
    context_settings={"allow_extra_args": True},
    help="Run SCRIPT unmodified under hfault and report faults. Script arguments go after --: "
    "hfault diagnose train.py -- --epochs 3",
)
def diagnose(
    ctx: typer.Context,
    script: Annotated[Path, typer.Argument(help="The training script to run as __main__.")],
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", min=1, help="Stop training cleanly after N optimizer steps."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Steps to snapshot: 'auto' (default), a list '1,50,100', 'every:N', or a mix.",
        ),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the JSON report to this file.")
    ] = None,
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 when a finding is at or above this.")
    ] = FailOn.error,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No terminal report.")] = False,
    nan_watch: Annotated[
        bool,
        typer.Option(
            "--nan-watch/--no-nan-watch",
            help="Check every module output for NaN/Inf (one reduction per output).",
        ),
    ] = True,
    curvature: Annotated[
        bool,
        typer.Option(
            "--curvature/--no-curvature",
            help="Hessian metrics at snapshot steps (--no-curvature: first-order only).",
        ),
    ] = True,
    budget: Annotated[
        Budget, typer.Option("--budget", help="HVP budget preset: probes and Lanczos steps.")
    ] = Budget.economy,
    probes: Annotated[
        int | None, typer.Option("--probes", min=1, help="Hutchinson probes per component.")
    ] = None,
    lanczos_steps: Annotated[
        int | None, typer.Option("--lanczos-steps", min=2, help="Lanczos steps per component.")
    ] = None,
    trace_method: Annotated[
        TraceMethod,
        typer.Option(
            "--trace-method",
            help="Traces of components outside the coupling set: 'block' (block-restricted "
            "probes, accurate) or 'shared' (one probe for all, cheap whole-layer monitoring).",
        ),
    ] = TraceMethod.block,
    components: Annotated[
        list[str] | None,
        typer.Option(
            "--components",
            help="Glob of component names to add to the coupling set (attention components are "
            "always in it); repeatable.",
        ),
    ] = None,
    show_traceback: Annotated[
        bool, typer.Option("--traceback", help="Print full tracebacks of errors.")
    ] = False,
) -> None:
    from hfault.diagnose import DiagnoseOptions, diagnose
    from hfault.report.json_report import write_json
    from hfault.report.terminal import render

    if not script.is_file():
        raise UsageFailure(f"no such script: {script}")
    try:
        schedule = parse_schedule(at, max_steps)
    except ScheduleError as exc:
        raise UsageFailure(str(exc)) from None
    config = None
    if curvature:
        from hfault.curvature import CurvatureSettings
        from hfault.probes.curvature_probe import CurvatureConfig

        config = CurvatureConfig(
            CurvatureSettings(
                budget=budget.value,
                probes=probes,
                lanczos_steps=lanczos_steps,
                trace_method=trace_method.value,
            ),
            tuple(components or ()),
        )
    options = DiagnoseOptions(script, list(ctx.args), schedule, max_steps, nan_watch, config)
    result = diagnose(options)
    report = result.report
    if json_path is not None:
        write_json(report, json_path)
    if not quiet:
        render(report, Console(width=None if sys.stdout.isatty() else 120))
    if json_path is not None and not quiet:
        print(f"JSON report written to {json_path}", file=sys.stderr)

    outcome = result.outcome
    if outcome.interrupted:
        raise typer.Exit(ExitCode.INTERRUPTED)
    if outcome.status == "crashed":
        err = outcome.error or {}
        where = f" ({err.get('file')}:{err.get('line')})" if err.get("file") else ""
        _err(f"the script raised {err.get('type')}: {err.get('message')}{where}")
        if show_traceback and err.get("traceback"):
            print(err["traceback"], file=sys.stderr, end="")
        raise typer.Exit(ExitCode.SCRIPT_CRASHED)
    if not result.trained:
        what = (
            "created no torch.optim optimizer"
            if not result.state.optimizers
            else "never called backward()"
        )
        _err(f"nothing to diagnose: {script} {what}")
        raise typer.Exit(ExitCode.USAGE)
    if fail_on is not FailOn.never:
        limit = SEVERITY_ORDER[fail_on.value]
        if any(SEVERITY_ORDER[f.severity] <= limit for f in report.findings):
            raise typer.Exit(ExitCode.FINDINGS)
    raise typer.Exit(ExitCode.OK)


@app.command(help="Print the version.")
def version() -> None:
    print(f"hfault {__version__}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps every failure to one line and an :class:`ExitCode`."""
    args = sys.argv[1:] if argv is None else argv
    show_tb = "--traceback" in args
    try:
        # Non-standalone click returns the code of a typer.Exit instead of raising it.
        code = app(args=args, prog_name="hfault", standalone_mode=False)
    except UsageFailure as exc:
        _err(str(exc))
        sys.exit(ExitCode.USAGE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(ExitCode.INTERRUPTED)
    except typer.TyperException as exc:  # typer's (vendored click) usage errors
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoSuchOption":
            message += " (script arguments go after --: hfault diagnose train.py -- --epochs 3)"
        _err(message)
        sys.exit(ExitCode.USAGE)
    except KeyboardInterrupt:
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug in hfault: one line, the traceback on request
        _err(f"internal error: {type(exc).__name__}: {exc} (please report; --traceback for more)")
        if show_tb:
            traceback.print_exc()
        sys.exit(ExitCode.INTERNAL)
    sys.exit(code if isinstance(code, int) else ExitCode.OK)
