"""User-facing errors.

Anything raised as :class:`UserInputError` is a problem with the user's data or settings, not a bug:
the entry points print its message as one line and exit non-zero without a stack trace (unless
``HYDRA_FULL_ERROR=1``).
"""


class UserInputError(Exception):
    """Bad data or configuration; the message names the file/line/setting and what to do."""
