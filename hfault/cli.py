"""``hfault`` command line. Errors are one line on stderr with a documented exit code
(:class:`hfault.ExitCode`); tracebacks only with ``--traceback``."""

from __future__ import annotations

import contextlib
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown

from hfault import __version__
from hfault.capture.schedule import ScheduleError, parse_schedule
from hfault.exitcodes import ExitCode
from hfault.findings import any_at_or_above
from hfault.report.outputs import OutputError, Outputs, check_outputs, write_outputs
from hfault.report.width import terminal_width
from hfault.rules.rule import RuleError

if TYPE_CHECKING:
    from hfault.capture.distributed import World
    from hfault.capture.runner import RunOutcome
    from hfault.diagnose import Diagnosis

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Localize training faults in PyTorch models to components, with second-order metrics.",
)


class FailOn(StrEnum):
    error = "error"
    warning = "warning"
    never = "never"


class Budget(StrEnum):
    economy = "economy"
    standard = "standard"
    thorough = "thorough"


class TraceMethod(StrEnum):
    block = "block"
    shared = "shared"


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML file with rule settings (else [tool.hfault] in the "
                 "nearest pyproject.toml above the script)."),
]
RulesOpt = Annotated[
    list[Path] | None, typer.Option("--rules", help="Folder of extra rule files; repeatable.")
]
SelectOpt = Annotated[
    list[str] | None,
    typer.Option("--select", help="Only these rules: ids, id prefixes (HF2) or names; "
                 "comma-separated or repeated."),
]
IgnoreOpt = Annotated[
    list[str] | None, typer.Option("--ignore", help="Skip these rules (ids, prefixes, names).")
]
SarifOpt = Annotated[
    Path | None, typer.Option("--sarif", help="Write SARIF 2.1.0 (for code scanning) here.")
]
GraphOpt = Annotated[
    Path | None,
    typer.Option("--graph", help="Write the last coupling graph as GraphML here."),
]
LrOpt = Annotated[
    float | None,
    typer.Option("--lr", min=0.0, help="The learning rate of a hand-written update loop (no "
                 "torch.optim optimizer): lets --curvature judge it. Ignored when the script "
                 "builds an optimizer."),
]
NanOpsOpt = Annotated[
    bool,
    typer.Option("--nan-ops", help="Watch every torch op from the first step and name the first "
                 "one that makes a NaN/Inf from finite inputs, with its line (one check per op: "
                 "slow). Without it the watch starts at the first non-finite value no module "
                 "output explains."),
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option("--html", help="Write a self-contained HTML report (charts, no network) here."),
]


class UsageFailure(Exception):
    """A usage problem found after option parsing (exit 2)."""


class EndProcess(Exception):
    """End the process with ``os._exit(code)`` once the report is out, as the script asked
    (``capture.hard_exit``): interpreter shutdown, which the script chose to skip, is skipped."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _first_line(message: object) -> str:
    """An exception message's first line, marked when it had more."""
    lines = [line for line in str(message or "").splitlines() if line.strip()] or [""]
    return lines[0] + (f" [+{len(lines) - 1} more line(s)]" if len(lines) > 1 else "")


def _err(message: str) -> None:
    """One line on stderr, whatever the message: a multi-line exception message keeps its first
    line (the rest is in the JSON report and under ``--traceback``)."""
    print(f"hfault: error: {_first_line(message)}", file=sys.stderr)


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
            help="Steps to snapshot: 'auto' (default), a list '1,50,100', 'every:N', 'every' "
            "(each step), or a mix.",
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
            help="Check every module output, and every gradient before the script's clipping, for "
            "NaN/Inf (one reduction per output; per parameter too where the script changes "
            "gradients before the step).",
        ),
    ] = True,
    curvature: Annotated[
        bool,
        typer.Option(
            "--curvature/--no-curvature",
            help="Also measure Hessian metrics (trace, λmax/λmin, stability ratio, couplings) at "
            "snapshot steps. Off by default: on held-out code they added no detection or "
            "localization at 1.4-2.3x the time (docs/accuracy.md).",
        ),
    ] = False,
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
    config: ConfigOpt = None,
    rules_dirs: RulesOpt = None,
    select: SelectOpt = None,
    ignore: IgnoreOpt = None,
    sarif_path: SarifOpt = None,
    graph_path: GraphOpt = None,
    html_path: HtmlOpt = None,
    verify_fix: Annotated[
        bool,
        typer.Option(
            "--verify-fix",
            help="Rerun the script with the mechanical fixes applied (per-component learning "
            "rates as a param-group split, gradient clipping) and compare before/after at the "
            "same steps; the exit code still comes from the first run's findings.",
        ),
    ] = False,
    verify_steps: Annotated[
        int | None,
        typer.Option(
            "--verify-steps",
            min=1,
            help="With --verify-fix: compare both runs over N optimizer steps (the rerun "
            "stops there; where the first run trained other steps, a rerun without fixes is the "
            "baseline). Default: the first run's steps (--max-steps, else the whole run).",
        ),
    ] = None,
    lr: LrOpt = None,
    nan_ops: NanOpsOpt = False,
    show_traceback: Annotated[
        bool, typer.Option("--traceback", help="Print full tracebacks of errors.")
    ] = False,
) -> None:
    from hfault.capture.distributed import World
    from hfault.capture.termination import held_sigterm
    from hfault.diagnose import DiagnoseOptions, diagnose

    if verify_steps is not None and not verify_fix:
        raise UsageFailure("--verify-steps needs --verify-fix")
    world = World.from_env()
    if world is not None and verify_fix:
        raise UsageFailure(f"--verify-fix reruns the script in this process, which a torchrun "
                           f"run of {world.size} processes does not allow; run it in one process")

    if not script.is_file():
        raise UsageFailure(f"no such script: {script}")
    _check_outputs(Outputs(json_path, sarif_path, graph_path, html_path))
    rules = _rule_set(script.resolve().parent, config, rules_dirs, select, ignore)
    try:
        schedule = parse_schedule(at, max_steps)
    except ScheduleError as exc:
        raise UsageFailure(str(exc)) from None
    curvature_config = None
    if curvature:
        from hfault.curvature import CurvatureSettings
        from hfault.probes.curvature_probe import CurvatureConfig

        curvature_config = CurvatureConfig(
            CurvatureSettings(
                budget=budget.value,
                probes=probes,
                lanczos_steps=lanczos_steps,
                trace_method=trace_method.value,
            ),
            tuple(components or ()),
        )
    options = DiagnoseOptions(
        script, list(ctx.args), schedule, max_steps, nan_watch, curvature_config, rules, world,
        lr=lr, op_watch=nan_ops,
    )
    # Under torchrun, the launcher's SIGTERM ends the script's run, not the report.
    with held_sigterm() if world is not None else contextlib.nullcontext():
        if verify_fix:
            from hfault.verify import diagnose_and_verify

            def progress(text: str) -> None:
                if not quiet:
                    print(f"hfault: {text}", file=sys.stderr, flush=True)

            verified = diagnose_and_verify(options, progress, verify_steps)
            result, data = verified.first, verified.data
        else:
            result = diagnose(options)
            data = result.report.to_dict()
        outcome = result.outcome
        if world is not None:
            world.cleanup()
        if outcome.unsupported:
            if world is not None and not world.lead:  # every rank found the same: rank 0 says it
                raise typer.Exit(ExitCode.USAGE)
            raise UsageFailure(outcome.unsupported)
        if world is not None and not world.lead:
            raise typer.Exit(_other_rank(world, outcome, quiet, show_traceback))
        _emit(data, [r.to_catalog() for r in rules], quiet, json_path, sarif_path, graph_path,
              html_path=html_path)

        rerun_interrupted = verify_fix and verified.interrupted
        raise typer.Exit(_exit_code(result, data, fail_on, show_traceback, rerun_interrupted))


def _exit_code(result: Diagnosis, data: dict[str, Any], fail_on: FailOn, show_traceback: bool,
               rerun_interrupted: bool) -> ExitCode:
    """How the run ended, for the exit code, said in one line where it is not the findings';
    under torchrun rank 0's code speaks for every rank. Raises :class:`EndProcess` when the
    script called ``os._exit``."""
    from hfault.report.ranks import worst_other_rank

    outcome = result.outcome
    if (outcome.interrupted and not outcome.terminated) or rerun_interrupted:
        return ExitCode.INTERRUPTED
    if outcome.status == "crashed":
        return _crashed(outcome.error or {}, show_traceback)
    if outcome.status == "exited":
        _exited(outcome.exit_code, outcome.error or {})
        raise EndProcess(ExitCode.SCRIPT_EXITED)
    other = worst_other_rank(data["run"])
    if other is not None:
        err = other.get("error") or {}
        if other["status"] == "crashed":
            _err(f"rank {other['rank']}: the script raised {err.get('type')}: "
                 f"{_first_line(err.get('message'))}{_where(err)}")
            return ExitCode.SCRIPT_CRASHED
        _err(f"rank {other['rank']}: the script called os._exit({other.get('exit_code')})"
             f"{_where(err)}: its process ended early")
        return ExitCode.SCRIPT_EXITED
    if outcome.terminated:  # torchrun stopped this rank, and no other rank said why
        return ExitCode.INTERRUPTED
    if not result.trained:
        state = result.state
        what = (
            "never called backward()" if state.optimizers
            else "created no torch.optim optimizer"
            + (" and changed no parameter after its backward()" if state.backward_calls else "")
        )
        _err(f"nothing to diagnose: {data['run']['script']} {what}")
        return ExitCode.USAGE
    return _findings_code(data, fail_on)


def _where(err: dict[str, Any]) -> str:
    return f" ({err.get('file')}:{err.get('line')})" if err.get("file") else ""


def _crashed(err: dict[str, Any], show_traceback: bool, who: str = "") -> ExitCode:
    """Say why the script's run crashed (one line); the exit code that says it."""
    if err.get("internal"):
        _err(f"{who}internal error while observing the script (not the script's fault): "
             f"{err.get('type')}: {_first_line(err.get('message'))} (please report; "
             "--traceback for more)")
    else:
        _err(f"{who}the script raised {err.get('type')}: {_first_line(err.get('message'))}"
             f"{_where(err)}")
    if show_traceback and err.get("traceback"):
        print(err["traceback"], file=sys.stderr, end="")
    return ExitCode.INTERNAL if err.get("internal") else ExitCode.SCRIPT_CRASHED


def _exited(code: int | None, err: dict[str, Any]) -> None:
    """The status line of a script that ended its process with ``os._exit``."""
    print(f"hfault: the script called os._exit({code}){_where(err)}: training ended there; "
          f"the report covers the steps before it (status exited, exit "
          f"{int(ExitCode.SCRIPT_EXITED)})", file=sys.stderr)


def _other_rank(world: World, outcome: RunOutcome, quiet: bool, show_traceback: bool) -> ExitCode:
    """A rank other than 0 under torchrun: one line, no files (rank 0 reports the run). Its exit
    code is 0 unless its own run crashed or was stopped: rank 0's judges the findings."""
    if not quiet:
        print(f"hfault: rank {world.rank} of {world.size}: {outcome.status}; the report is "
              "rank 0's", file=sys.stderr)
    if outcome.interrupted:
        return ExitCode.INTERRUPTED
    if outcome.status == "crashed":
        return _crashed(outcome.error or {}, show_traceback, f"rank {world.rank}: ")
    if outcome.status == "exited":
        raise EndProcess(ExitCode.OK)
    return ExitCode.OK


def _check_outputs(outputs: Outputs) -> None:
    """Every output path can be written, checked before the script runs (exit 2)."""
    try:
        check_outputs(outputs)
    except OutputError as exc:
        raise UsageFailure(str(exc)) from None


def _findings_code(data: dict[str, Any], fail_on: FailOn) -> ExitCode:
    if fail_on is FailOn.never:
        return ExitCode.OK
    hit = any_at_or_above(data.get("findings", []), fail_on.value)
    return ExitCode.FINDINGS if hit else ExitCode.OK


def _rule_set(
    start: Path,
    config: Path | None,
    rules_dirs: list[Path] | None,
    select: list[str] | None,
    ignore: list[str] | None,
) -> list[Any]:
    """Built-in and user rules, filtered and with thresholds from --config or the nearest
    pyproject.toml with a [tool.hfault] table (searched from the script's folder upwards)."""
    from hfault.rules import find_pyproject, load_config, load_rules
    from hfault.rules.catalog import split_codes

    if config is not None and not config.is_file():
        raise UsageFailure(f"no such config file: {config}")
    source = config if config is not None else find_pyproject(start)
    settings = load_config(source) if source is not None else None
    return load_rules(
        settings,
        [d.resolve() for d in rules_dirs or ()],
        split_codes(select or ()),
        split_codes(ignore or ()),
    )


def _emit(
    data: dict[str, Any],
    catalog: list[dict[str, Any]],
    quiet: bool,
    json_path: Path | None,
    sarif_path: Path | None,
    graph_path: Path | None,
    *,
    html_path: Path | None = None,
) -> None:
    """Every output of a report: its files, then (unless quiet) the terminal report."""
    from hfault.report.terminal import render, report_console

    written = write_outputs(data, catalog, Outputs(json_path, sarif_path, graph_path, html_path))
    if not quiet:
        render(data, report_console())
        for line in written:
            print(line, file=sys.stderr)


@app.command(
    "report",
    help="Re-render a saved JSON report (terminal, SARIF, GraphML, HTML); exit code as for "
    "diagnose.",
)
def report_command(
    path: Annotated[Path, typer.Argument(help="A JSON report written by diagnose --json.")],
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 when a finding is at or above this.")
    ] = FailOn.error,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No terminal report.")] = False,
    rules_dirs: RulesOpt = None,
    sarif_path: SarifOpt = None,
    graph_path: GraphOpt = None,
    html_path: HtmlOpt = None,
) -> None:
    import json

    from hfault.report.build import derive
    from hfault.rules import load_rules

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageFailure(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageFailure(f"{path}:{exc.lineno}: not a JSON report: {exc.msg}") from None
    except UnicodeDecodeError:
        raise UsageFailure(f"{path}: not a JSON report: not UTF-8 text") from None
    if not isinstance(data, dict) or "findings" not in data or "run" not in data:
        raise UsageFailure(f"{path}: not an hfault JSON report (no 'run' and 'findings')")
    derive(data)  # a report saved before a derived metric existed renders the same
    catalog = {r.id: r.to_catalog() for r in load_rules(None, rules_dirs or ())}
    for saved in data.get("rules", []):
        catalog.setdefault(saved["id"], {"rationale": "", **saved})
    _emit(data, list(catalog.values()), quiet, None, sarif_path, graph_path, html_path=html_path)
    raise typer.Exit(_findings_code(data, fail_on))


@app.command(
    "perturb",
    context_settings={"allow_extra_args": True},
    help="Inject θ_b ← θ_b + α·RMS(θ_b)·δ, δ ~ N(0, I), into components during training and "
    "measure Δloss, prediction flips, Δgradient norm and Δcurvature against an unperturbed run "
    "(mean and 95% CI over draws; ΔL vs ½α²RMS²Tr(H_bb)). Script arguments go after --.",
)
def perturb_command(
    ctx: typer.Context,
    script: Annotated[Path, typer.Argument(help="The training script to run as __main__.")],
    component: Annotated[
        list[str],
        typer.Option("--component", "-c", help="Component name or glob; repeatable or "
                     "comma-separated. Each match is perturbed alone (see --together)."),
    ],
    alpha: Annotated[
        list[str] | None,
        typer.Option("--alpha", "-a", help="Relative noise scale(s) α; repeatable or "
                     "comma-separated: several give a sweep (default 0.001,0.01,0.1)."),
    ] = None,
    draws: Annotated[
        int, typer.Option("--draws", "-r", min=1, help="Perturbed runs per component and α.")
    ] = 10,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Injection steps: a list '10,20', 'every:N', 'every' (each "
                     "step), or a mix; 'auto' (default): one injection at --max-steps/2."),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", min=1, help="Stop every run after N optimizer steps."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of hfault's own δ generator.")] = 0,
    together: Annotated[
        bool, typer.Option("--together", help="Perturb all matched components at once.")
    ] = False,
    antithetic: Annotated[
        bool,
        typer.Option("--antithetic/--no-antithetic",
                     help="Draws in pairs δ, −δ (cancels the first-order term in the mean)."),
    ] = True,
    curvature: Annotated[
        bool,
        typer.Option("--curvature/--no-curvature",
                     help="Tr(H_bb), λmax at the step after the injection (HVPs)."),
    ] = True,
    probes: Annotated[
        int, typer.Option("--probes", min=1, help="Hutchinson probes per component.")
    ] = 16,
    lanczos_steps: Annotated[
        int, typer.Option("--lanczos-steps", min=2, help="Lanczos steps per component.")
    ] = 20,
    noise_floor: Annotated[
        bool,
        typer.Option("--noise-floor/--no-noise-floor",
                     help="Run the unperturbed script twice and report their difference."),
    ] = True,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON here.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No terminal tables.")] = False,
    show_output: Annotated[
        bool, typer.Option("--show-output", help="Show the baseline run's own output.")
    ] = False,
    lr: LrOpt = None,
    nan_ops: NanOpsOpt = False,
    show_traceback: Annotated[
        bool, typer.Option("--traceback", help="Print full tracebacks of errors.")
    ] = False,
) -> None:
    from hfault.capture.distributed import World
    from hfault.perturb.driver import PerturbOptions, PerturbUsageError, perturb
    from hfault.perturb.injection import InjectionError, parse_injection
    from hfault.perturb.report import render as render_perturb
    from hfault.perturb.report import write_json
    from hfault.report.terminal import report_console

    if not script.is_file():
        raise UsageFailure(f"no such script: {script}")
    world = World.from_env()
    if world is not None:
        raise UsageFailure(f"perturb reruns the script in this process, which a torchrun run "
                           f"of {world.size} processes does not allow; run it in one process")
    names = [n.strip() for c in component for n in c.split(",") if n.strip()]
    if not names:
        raise UsageFailure("--component names no component")
    alphas: list[float] = []
    for text in alpha or ["0.001,0.01,0.1"]:
        for token in (t.strip() for t in text.split(",")):
            try:
                alphas.append(float(token))
            except ValueError:
                raise UsageFailure(f"--alpha: {token!r} is not a number") from None
    try:
        injection = parse_injection(at, max_steps)
    except InjectionError as exc:
        raise UsageFailure(str(exc)) from None
    tty = sys.stderr.isatty() and not quiet

    def progress(text: str) -> None:
        print(f"\r\033[Khfault perturb: {text}", end="", file=sys.stderr, flush=True)

    options = PerturbOptions(
        script, names, alphas, injection, argv=list(ctx.args), draws=draws, max_steps=max_steps,
        seed=seed, together=together, antithetic=antithetic, curvature=curvature, probes=probes,
        lanczos_steps=lanczos_steps, noise_floor=noise_floor, show_output=show_output,
        progress=progress if tty else None,
    )
    try:
        result = perturb(options)
    except PerturbUsageError as exc:
        raise UsageFailure(str(exc)) from None
    finally:
        if tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    if json_path is not None:
        write_json(result.data, json_path)
    if not quiet:
        render_perturb(result.data, report_console())
        if json_path is not None:
            print(f"JSON written to {json_path}", file=sys.stderr)
    if result.error:
        _err(result.error)
        tb = (result.data.get("error") or {}).get("traceback")
        if show_traceback and tb:
            print(tb, file=sys.stderr, end="")
    raise typer.Exit(result.exit_code)


rules_app = typer.Typer(
    help="List the rules, or explain one: hfault rules explain HF201",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(rules_app, name="rules")


@rules_app.callback()
def rules_list(
    ctx: typer.Context,
    rules_dirs: RulesOpt = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from hfault.report.columns import Column, fit
    from hfault.rules import load_rules

    rules = load_rules(None, rules_dirs or ())
    columns = [Column(key, [str(getattr(r, key)) for r in rules], justify="left",
                      kind="wrap" if key == "summary" else "fixed")
               for key in ("id", "name", "scope", "severity", "summary")]
    width = terminal_width()
    table = fit(columns, ("severity", "scope"), width).table("hfault rules")
    Console(width=width).print(table)


@rules_app.command("explain", help="Print one rule: condition, thresholds, rationale, example.")
def rules_explain(
    rule_id: Annotated[str, typer.Argument(help="Rule id (HF201) or name.")],
    rules_dirs: RulesOpt = None,
) -> None:
    from hfault.rules import load_rules
    from hfault.rules.docs import explain

    rules = load_rules(None, rules_dirs or ())
    match = [r for r in rules if rule_id.upper() == r.id or rule_id == r.name]
    if not match:
        raise UsageFailure(f"no rule {rule_id!r}; see hfault rules")
    Console(width=terminal_width(piped=100)).print(Markdown(explain(match[0])))


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
    except (UsageFailure, RuleError) as exc:
        _err(str(exc))
        sys.exit(ExitCode.USAGE)
    except EndProcess as exc:
        from hfault.capture.hard_exit import REAL_EXIT

        sys.stdout.flush()
        sys.stderr.flush()
        REAL_EXIT(exc.code)
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


