"""The one base class of problems a user can act on.

The command line prints a `CaiError` as one line (`cai: error: ...`) and exits with its `exit_code` (2 for bad
input, 1 for a run that stopped with its work saved); anything else is a bug and shows its traceback.
"""

from __future__ import annotations


class CaiError(Exception):
    """A problem with what the user asked for or gave, explained in its message."""

    exit_code = 2


class UsageError(CaiError, ValueError):
    """An option, file or model that cannot be used as given."""
