"""The process exit codes of ``hfault``: a public contract for CI scripts."""

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of ``hfault diagnose`` (and the other commands)."""

    OK = 0
    """No finding at or above ``--fail-on``."""
    FINDINGS = 1
    """At least one finding at or above ``--fail-on``."""
    USAGE = 2
    """Usage or configuration error: no such script, bad option, nothing to diagnose."""
    SCRIPT_CRASHED = 3
    """The user's script raised; the partial report is still written (status ``crashed``)."""
    INTERNAL = 4
    """A bug in hfault itself."""
    SCRIPT_EXITED = 5
    """The script ended its process with ``os._exit(n)`` (any n, 0 included); the report is
    still written (status ``exited``, ``n`` in ``run.exit_code``)."""
    INTERRUPTED = 130
    """Ctrl-C (SIGINT); the partial report is still written (status ``stopped``)."""
