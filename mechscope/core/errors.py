"""Errors mechscope raises; each message says what went wrong and what to do instead."""


class MechscopeError(Exception):
    """Base class of every error mechscope raises on purpose."""


class SiteError(MechscopeError, KeyError):
    """A site name or Site that does not exist (the message lists the nearest valid ones)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class InterventionError(MechscopeError, ValueError):
    """An intervention that cannot apply: wrong shape, head out of range, missing axis."""


class LoadError(MechscopeError, RuntimeError):
    """A model or file that cannot be loaded (the message names the file and the problem)."""
