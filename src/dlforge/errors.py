"""User-facing errors.

Anything the user can fix (a bad path, an unknown option, a corrupt checkpoint) raises
`DlforgeError` with a one-line message that says what is wrong and what to do. The CLI prints
that line and exits non-zero without a traceback; Python callers can catch it (it is a
`ValueError`).
"""


class DlforgeError(ValueError):
    """An error caused by input the user can correct; its message is shown as one line."""
