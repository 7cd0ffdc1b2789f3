"""The one exception type users see: a message naming the file and the problem."""


class SimudyError(Exception):
    """A user-facing error; the CLI prints it on one line and exits with status 2."""


def dotted(parts) -> str:
    """A key path for a one-line message; a key that is not plain printable text (a newline,
    an empty name) is shown quoted, so no key can break the message's line."""
    return ".".join(_key(str(part)) for part in parts)


def short(value, width: int = 60) -> str:
    """A value for a message, cut to `width` characters."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _key(text: str) -> str:
    return text if text.isprintable() and text.strip() == text and text else repr(text)
