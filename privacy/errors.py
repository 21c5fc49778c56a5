"""One exception type for problems a user can fix (bad input, bad settings, bad files).

The CLI turns it into a single line on stderr and exit status 2, never a traceback; anything
else escaping is a bug and keeps its traceback.
"""


class FedVaultError(Exception):
    """A problem with the user's input or environment, stated in one line."""
