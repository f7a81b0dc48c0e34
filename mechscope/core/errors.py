"""Errors mechscope raises; each message says what went wrong and what to do instead."""


class MechscopeError(Exception):
    """Base class of every error mechscope raises on purpose.

    Example::

        try:
            ms.run(model, tokens, capture=["resid_pre.99"])
        except ms.MechscopeError as err:         # every error mechscope raises on purpose
            print(err)
    """


class SiteError(MechscopeError, KeyError):
    """A site name or Site that does not exist (the message lists the nearest valid ones).

    Example::

        try:
            ms.Site.parse("resid_pree.2")
        except ms.SiteError as err:
            print(err)                           # lists the nearest valid names
    """

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class InterventionError(MechscopeError, ValueError):
    """An intervention that cannot apply: wrong shape, head out of range, missing axis.

    Example::

        try:
            ms.run(model, tokens, interventions=ms.Zero("attn.z.0", heads=[99]))
        except ms.InterventionError as err:
            print(err)                           # names the head range the site has
    """


class LoadError(MechscopeError, RuntimeError):
    """A model or file that cannot be loaded (the message names the file and the problem).

    Example::

        try:
            ms.load("no/such/dir")
        except ms.LoadError as err:
            print(err)                           # names the path and what to do
    """
