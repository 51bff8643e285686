"""The errors a user's input raises: each message is one line naming the key, file or value and
what to do (the command prints it and exits with status 2)."""


class ConfigError(ValueError):
    """A bad configuration value; the message says which and what to do."""


def say(line: str) -> None:
    """Write one line to stderr in a single write. Under torchrun every rank shares the pipe, and
    `print` to the unbuffered stderr writes the text and the newline separately, so two ranks'
    lines could run together."""
    import sys

    sys.stderr.write(line + "\n")
    sys.stderr.flush()
