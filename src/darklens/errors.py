"""User-facing errors: one line that names the file and the problem."""


class DarklensError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    The CLI prints ``darklens: error: <message>`` and exits with status 2.
    """
