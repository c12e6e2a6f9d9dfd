"""hfault: localize training faults to model components with second-order information."""

from hfault.exitcodes import ExitCode

__version__ = "0.1.0"
__all__ = ["ExitCode", "__version__"]
