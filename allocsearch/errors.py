"""Errors raised for user mistakes.

Every error a user can cause is an `AllocSearchError`. The message names the argument, echoes the
value and says how to fix it; the CLI prints it and exits with status 2.
"""


class AllocSearchError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(AllocSearchError, ValueError):
    """An argument has a value the library cannot use."""


class BudgetError(AllocSearchError, ValueError):
    """A budget is malformed or cannot be met by the search space."""


class SpaceError(AllocSearchError, ValueError):
    """A search space is unknown or does not fit the model."""


class InputFileError(AllocSearchError, FileNotFoundError):
    """A file named by the user is missing or unreadable."""


class ModelLoadError(AllocSearchError, OSError):
    """A model could not be loaded from the hub or a directory."""
