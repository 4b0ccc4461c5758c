"""Errors the user can act on. The CLI turns them into one line and exit code 2."""


class InputError(ValueError):
    """Bad user input (config key, data file, parameter value); the message names it."""
