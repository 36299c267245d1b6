"""User-facing errors."""


class DataError(ValueError):
    """Bad input data: the message names the file, column, row or parameter and the value."""
