"""The one exception type a user is meant to see."""


class DistillError(Exception):
    """A problem a user can act on; the CLI prints it as one line and exits non-zero."""
