"""The exceptions the command line turns into one-line messages."""


class FeatcacheError(Exception):
    """A problem with the user's input or environment, with a message saying what to do.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    """


class ParameterError(FeatcacheError, ValueError):
    """A parameter value that breaks its rule. ``parameter`` is the Python name (``batch_size``); the CLI
    shows its own flag (``--batch-size``) in its place."""

    def __init__(self, parameter: str, value, requirement: str, owner: str | None = None):
        self.parameter, self.value, self.requirement, self.owner = parameter, value, requirement, owner
        super().__init__(self.describe(f"{parameter}={value!r}"))

    def describe(self, named: str) -> str:
        """The message with the parameter shown as ``named`` (e.g. ``--batch-size 100``)."""
        return f"{self.owner + ': ' if self.owner else ''}{named} must be {self.requirement}"


class WeightsUnavailable(FeatcacheError):
    """Pretrained weights that are neither on disk nor downloadable (offline, or a blocked host)."""
