"""Errors that are the user's to fix: the CLI prints them as one line, never a traceback."""


class GateError(Exception):
    """Base of every user-facing error."""


class ConfigError(GateError):
    """A config that cannot be used; the message names the file and the key."""


class StoreError(GateError):
    """A request the database cannot honour (unknown person, name taken, bad file...)."""


class ImageError(GateError):
    """An image that cannot be used; the message says which and why."""


class ComponentError(GateError):
    """A detector, encoder, matcher or actuator that cannot start."""


class SourceError(GateError):
    """A video source that cannot be opened."""


class TrainingError(GateError):
    """Training data or settings that cannot give an encoder variant; the message says why."""
