"""The one base exception of Podium and the two kinds a user meets."""


class PodiumError(Exception):
    """Anything Podium reports to a user as one clear sentence (exit 1)."""

    exit_code = 1


class InvalidInput(PodiumError):
    """Input the user can fix: a stack field, a flag, a file (exit 2)."""

    exit_code = 2
