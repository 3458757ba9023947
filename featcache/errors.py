"""The one exception type the command line turns into a one-line message."""


class FeatcacheError(Exception):
    """A problem with the user's input or environment, with a message saying what to do.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    """
