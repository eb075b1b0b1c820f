"""gate: face-recognition access control built from pluggy plugins."""

from gate.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
