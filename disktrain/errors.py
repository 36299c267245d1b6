"""User-facing errors."""


class DataError(ValueError):
    """Bad input data: the message names the file, column, row or parameter and the value."""


class CorruptDataError(DataError):
    """A stored array failed its checksum or size check.

    The message names the store, the array and the chunk file, and says which step to rerun.
    """


class DiskSpaceError(DataError):
    """Not enough free disk space: the message gives the bytes needed and the bytes free."""
