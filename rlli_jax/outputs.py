"""Output files: checks that a path given on the command line can be written, before any work,
and atomic writes.

Each check raises ValueError naming the option, the value and the rule, so that a script
reports a bad `--out` in one line instead of failing after minutes of compiling or training.
A leading `~` is expanded, as the shell would do for a separate argument (it does not after
`--out=`).

The files that runs, sweeps and studies write whole (configs, summaries, digests, tables,
figures) go through `write_bytes_atomic`. It writes the bytes to a hidden temporary file in the
same folder and flushes them to disk. One rename then replaces the file, so a kill or a full
disk leaves either the old file or the new one, never a torn one.
"""

import functools
import io
import json
import math
import numbers
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _nearest_existing(path: Path) -> Path:
    """Return `path` or its nearest ancestor that exists: at the latest the current folder, or
    the root for an absolute path."""
    return next(folder for folder in (path, *path.parents) if folder.exists())


def _check_text(value: str | os.PathLike, option: str) -> Path:
    text = os.fspath(value)
    if not text.strip():
        raise ValueError(f"{option} = {text!r} is invalid: it must name a path")
    path = Path(text).expanduser()
    if path.is_symlink() and not path.exists():
        raise ValueError(
            f"{option} = {text!r} is invalid: it is a symbolic link to {os.readlink(path)!r}, "
            "which does not exist"
        )
    return path


def _check_creatable(folder: Path, option: str, value: str) -> None:
    """Raise unless `folder` is, or can be created as, a writable folder."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ValueError(f"{option} = {value!r} is invalid: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} = {value!r} is invalid: {existing} is not writable")


def _os_errors_as_value_errors(check: Callable[..., Path]) -> Callable[..., Path]:
    """Report an OSError of a check (a name too long, a loop of links) as a ValueError."""

    @functools.wraps(check)
    def checked(value: str | os.PathLike, option: str = "--out", *args, **kwargs) -> Path:
        try:
            return check(value, option, *args, **kwargs)
        except OSError as error:
            reason = error.strerror or str(error)
            raise ValueError(f"{option} = {os.fspath(value)!r} is invalid: {reason}") from None

    return checked


@_os_errors_as_value_errors
def check_output_folder(value: str | os.PathLike, option: str = "--out") -> Path:
    """Return `value` as a Path (with `~` expanded) if it is, or can become, a writable folder.

    Raises:
        ValueError: the value is empty, names a file or a broken link, lies under a file or
            a folder that is not writable, or the system rejects the path (a name too long).
    """
    path = _check_text(value, option)
    text = os.fspath(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} = {text!r} is invalid: it is a file, expected a folder")
    _check_creatable(path, option, text)
    return path


@_os_errors_as_value_errors
def check_output_file(
    value: str | os.PathLike, option: str = "--out", suffix: str | None = None
) -> Path:
    """Return `value` as a Path (with `~` expanded) if it is, or can become, a writable file.

    Args:
        value: the path as given.
        option: the option's name, for the message.
        suffix: a required file name ending such as ".png" (compared without case).
    Raises:
        ValueError: the value is empty, names a folder or a broken link, lacks `suffix`, lies
            under a file or a folder that is not writable, or the system rejects the path.
    """
    path = _check_text(value, option)
    text = os.fspath(value)
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise ValueError(f"{option} = {text!r} is invalid: it is a folder, expected a file path")
    if suffix is not None and path.suffix.lower() != suffix:
        raise ValueError(f"{option} = {text!r} is invalid: expected a {suffix} file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} = {text!r} is invalid: the file is not writable")
    _check_creatable(path.parent, option, text)
    return path


# Prefix of the temporary files of `write_bytes_atomic`: hidden, and named after the target.
PARTIAL_PREFIX = ".partial."


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace the file `path` by `data` in one rename, so readers see the old or the new file.

    The temporary file is `.partial.<name>.<random>` in the same folder, flushed to disk before
    the rename and removed if anything fails. It gets the permissions of the file it replaces,
    or those of a new file under the umask. A symbolic link at `path` is kept, and the file it
    points to is replaced. The folder must exist. A `kill -9` during the write can leave the
    temporary file behind; no reader opens it, and it may be deleted.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    while True:
        temporary = path.with_name(f"{PARTIAL_PREFIX}{path.name}.{secrets.token_hex(4)}")
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        if mode is not None:
            os.chmod(temporary, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text through `write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _json_scalar(value: Any) -> Any:
    """Convert a 0-d NumPy or JAX value to its Python number, and reject anything else."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def json_safe(value: Any) -> Any:
    """Return `value` with every NaN or infinity replaced by None, which JSON can store.

    Dicts, lists and tuples are copied with their items replaced; tuples become lists. NumPy
    floats count too (numbers.Real covers them), because `write_json_atomic` writes them.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json_atomic(path: str | os.PathLike, document: Any, **dumps_options: Any) -> None:
    """Write `document` as JSON with a final newline through `write_text_atomic`.

    `dumps_options` go to `json.dumps`. By default `indent=2`, and 0-d NumPy or JAX values
    are written as numbers.
    """
    dumps_options.setdefault("indent", 2)
    dumps_options.setdefault("default", _json_scalar)
    write_text_atomic(path, json.dumps(document, **dumps_options) + "\n")


def save_figure_atomic(figure, path: str | os.PathLike, **savefig_options: Any) -> None:
    """Save a matplotlib figure through `write_bytes_atomic`, in the format its suffix names."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or None, **savefig_options)
    write_bytes_atomic(path, buffer.getvalue())
