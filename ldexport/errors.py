"""The one exception type for user errors.

Anything the user can fix (a missing file, a bad config key, a teacher whose ``reg_max``
differs from the student's) raises :class:`LdexportError`; the CLI prints its message on
one line and exits with code 1. Any other exception is a bug in ldexport.
"""


class LdexportError(Exception):
    """A user error: the message is shown as one line, and the process exits 1."""
