"""The errors a user can fix, each naming what to change. A leaf: every room imports it, it imports nothing."""


class ConfigError(ValueError):
    """A user error in the config; the message names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class DataError(ValueError):
    """Bad input data (a malformed line, a missing field, an empty file, nothing left after cleaning); the message
    names the file and line, the field or the config key."""
