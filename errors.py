"""User-facing errors.

A :class:`UserError` carries one message that names the problem and the fix. ``main.py``
prints it without a traceback and exits with status 1; library code raises it for bad
configs, missing data, corrupt checkpoints and unwritable work directories.
"""


class UserError(Exception):
    """A problem the user can fix: bad config, missing data, corrupt checkpoint, ..."""


def config_error(field: str, value: object, problem: str) -> UserError:
    """The one-line error of a bad config field: ``config.<field>=<value> <problem>; fix
    the config file or pass --config.<field>=...`` (``problem`` says why, and how to fix
    it when there is more to say)."""
    return UserError(
        f'config.{field}={value!r} {problem}; fix the config file or pass --config.{field}=...'
    )
