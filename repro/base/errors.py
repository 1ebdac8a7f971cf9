"""One error type that the CLI turns into a one-line message and an exit code.

Exit codes are a contract: 0 ok, 1 findings or a failed check, 2 bad input or an infeasible request.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class ReproError(Exception):
    """A user-facing failure: one line that names the file/field/line and what to do."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.message = " ".join(str(message).split())  # always one line
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
