"""The errors a user is meant to read: one line naming the field, repo or column, no traceback needed."""


class PreflightError(ValueError):
    """Bad input found before any expensive stage; the message names the field, repo or column."""
