"""User-facing errors, and the lower-bound check that configs share (:func:`check_min`)."""


class DataError(ValueError):
    """Bad input data: the message names the file, column, row or parameter and the value."""


class CorruptDataError(DataError):
    """A stored array failed its checksum or size check.

    The message names the store, the array and the chunk file, and says which step to rerun.
    """


class DiskSpaceError(DataError):
    """Not enough free disk space: the message gives the bytes needed and the bytes free."""


class ConfigError(ValueError):
    """An invalid setting: the message names the parameter (option) and the value received."""


class CheckpointError(DataError):
    """A checkpoint that cannot be loaded or resumed from: the message names the file and why."""


def check_min(cfg, low: int, *names: str, owner: str = "") -> None:
    """ValueError naming the first of the fields ``names`` of ``cfg`` below ``low`` (after
    ``owner``, e.g. ``"TrainConfig."``) and its value; a field that is None (unset) passes."""
    for name in names:
        if (value := getattr(cfg, name)) is not None and value < low:
            raise ValueError(f"{owner}{name} must be >= {low}, got {value}")


class NonFiniteError(ArithmeticError):
    """Training produced a non-finite loss, gradient or parameter.

    The message names the epoch and batch, and says what was kept (the last good checkpoint).
    """
