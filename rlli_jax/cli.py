"""Helpers that the command-line scripts share: the Ctrl-C exit status and the exit itself."""

import os
import shlex
import sys

# Exit status of a script stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def command_line(argv: list[str] | None, script: str) -> str:
    """Return the shell command that runs `script` with `argv`, or this process's own command
    when `argv` is None. Resume hints print it."""
    if argv is None:
        return shlex.join(["python", sys.argv[0], *sys.argv[1:]])
    return shlex.join(["python", script, *argv])


def exit_process(code: int) -> None:
    """Exit with `code`, skipping the interpreter's teardown after a Ctrl-C (`INTERRUPTED`).

    XLA threads may still be compiling after a Ctrl-C, and a normal interpreter exit was seen
    to abort in their teardown. Checkpoint saves and atomic file writes return only when
    final, so skipping the teardown cuts none of them short. A Ctrl-C inside a checkpoint save
    leaves orbax's temporary folder, which the next start removes.
    """
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
