"""User-facing errors.

A :class:`UserError` carries one message that names the problem and the fix. ``main.py``
prints it without a traceback and exits with status 1; library code raises it for bad
configs, missing data, corrupt checkpoints and unwritable work directories.
"""


class UserError(Exception):
    """A problem the user can fix: bad config, missing data, corrupt checkpoint, ..."""
