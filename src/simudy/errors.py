"""The one exception type users see: a message naming the file and the problem."""


class SimudyError(Exception):
    """A user-facing error; the CLI prints it on one line and exits with status 2."""
