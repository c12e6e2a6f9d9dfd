"""Run a corpus program with one mutation operator installed (see README.md).

    python launch.py PROGRAM.py [--op OP] [--target MODULE] [--factor F] [--mutation-seed N] \\
        -- PROGRAM_ARGS...

runs ``python PROGRAM.py PROGRAM_ARGS...`` (``runpy.run_path(..., run_name="__main__")``, with
``sys.argv = [PROGRAM, *PROGRAM_ARGS]`` and the program's folder first on ``sys.path``) with the
mutation installed; without ``--op`` the healthy program runs unchanged. Works as the script of
``hfault diagnose launch.py -- PROGRAM.py --op ... -- --seed 1``: the patches wrap whatever hfault
installed before. One line on stderr says what was installed, another when it was applied. Exit
code 2 (one-line error) when the mutation cannot be installed or never took effect.
"""

from __future__ import annotations

import argparse
import importlib.util
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _mutations():  # type: ignore[no-untyped-def]
    name = "corpus_mutations"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "mutations.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        own, program_args = argv[:cut], argv[cut + 1:]
    else:
        own, program_args = argv, []
    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("program", help="the corpus program (a .py file)")
    parser.add_argument("--op", help="mutation operator (none: the healthy program)")
    parser.add_argument("--target", help="module name (module operators)")
    parser.add_argument("--factor", type=float, help="operator factor (default per operator)")
    parser.add_argument("--mutation-seed", type=int, default=0,
                        help="seed of the mutation's own randomness (label_noise)")
    return parser.parse_args(own), program_args


def _fail(message: str) -> None:
    print(f"launch.py: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    opts, program_args = parse(sys.argv[1:] if argv is None else argv)
    program = Path(opts.program)
    if not program.is_file():
        _fail(f"no such program: {program}")
    mut = None
    if opts.op is not None:
        m = _mutations()
        try:
            mut = m.Mutation(opts.op, opts.target, opts.factor, opts.mutation_seed).install()
        except m.MutationError as exc:
            _fail(exc.message)
    elif opts.target is not None or opts.factor is not None:
        _fail("--target/--factor given without --op")

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(program), *program_args]
    folder = str(program.resolve().parent)
    if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    finished = False
    try:
        runpy.run_path(str(program), run_name="__main__")
        finished = True
    except SystemExit as exc:
        if mut is not None and type(exc).__name__ == "MutationError":
            _fail(exc.message)  # type: ignore[attr-defined]
        if exc.code not in (None, 0):
            raise
        finished = True
        raise
    except BaseException as exc:
        # hfault ends a run at --max-steps by raising StopTraining through the script
        finished = type(exc).__name__ == "StopTraining"
        raise
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        if mut is not None:
            mut.uninstall()
            problem = mut.problem() if finished else None
            if problem is not None:
                _fail(problem)


if __name__ == "__main__":
    main()
