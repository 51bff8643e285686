"""The errors a user's input raises: each message is one line naming the key, file or value and
what to do (the command prints it and exits with status 2)."""


class ConfigError(ValueError):
    """A bad configuration value; the message says which and what to do."""
