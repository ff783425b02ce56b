"""The error every data problem raises: its message names the file and line, the field or the config key."""


class DataError(ValueError):
    """Bad input data (a malformed line, a missing field, an empty file, nothing left after cleaning)."""
