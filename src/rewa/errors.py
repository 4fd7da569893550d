"""Errors that the command line reports in one line, without a traceback."""


class UsageError(Exception):
    """Bad input: a flag, a config key, a missing file. The message says what to do."""
