"""Output paths shared by the scripts: bad --out values fail before any work, and files are
replaced whole."""

import json
import os

import matplotlib
import numpy as np
import pytest

from rlli_jax.outputs import (
    check_output_file,
    check_output_folder,
    json_safe,
    save_figure_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

matplotlib.use("Agg")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A scratch folder holding a file `afile` and a folder `adir`, as the working folder."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "value, message",
    [
        ("", r"--out = '' is invalid: it must name a path"),
        ("  ", r"--out = '  ' is invalid: it must name a path"),
        ("afile", r"--out = 'afile' is invalid: it is a file, expected a folder"),
        ("afile/run", r"--out = 'afile/run' is invalid: afile is a file, not a folder"),
        ("afile/a/b", r"--out = 'afile/a/b' is invalid: .*afile is a file, not a folder"),
    ],
)
def test_folder_check_rejects(scratch, value, message):
    with pytest.raises(ValueError, match=message):
        check_output_folder(value)


@pytest.mark.parametrize("value", ["adir", "adir/new/run", "new", "."])
def test_folder_check_accepts(scratch, value):
    assert str(check_output_folder(value)) == os.path.normpath(value)
    assert not (scratch / "new").exists()  # the check creates nothing


@pytest.mark.parametrize(
    "value, suffix, message",
    [
        ("", None, r"--out = '' is invalid: it must name a path"),
        ("adir", None, r"--out = 'adir' is invalid: it is a folder, expected a file path"),
        ("new/", None, r"--out = 'new/' is invalid: it is a folder, expected a file path"),
        ("afile/x.json", None, r"--out = 'afile/x\.json' is invalid: afile is a file"),
        ("c.jpg", ".png", r"--out = 'c\.jpg' is invalid: expected a \.png file path"),
        ("adir", ".png", r"--out = 'adir' is invalid: it is a folder"),
    ],
)
def test_file_check_rejects(scratch, value, suffix, message):
    with pytest.raises(ValueError, match=message):
        check_output_file(value, suffix=suffix)


@pytest.mark.parametrize("value", ["afile", "new.json", "adir/sub/x.json", "C.PNG"])
def test_file_check_accepts(scratch, value):
    suffix = ".png" if value.endswith("PNG") else None
    assert str(check_output_file(value, suffix=suffix)) == value


def test_option_name_appears_in_the_message(scratch):
    with pytest.raises(ValueError, match=r"^--metrics-out = 'afile/m' is invalid"):
        check_output_file("afile/m", option="--metrics-out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_unwritable_folder_is_rejected(scratch):
    locked = scratch / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ValueError, match=r"locked is not writable"):
            check_output_folder("locked/run")
        with pytest.raises(ValueError, match=r"locked is not writable"):
            check_output_file("locked/x.json")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("check", [check_output_folder, check_output_file])
def test_too_long_name_is_one_error(scratch, check):
    with pytest.raises(ValueError, match=r"^--out = 'xxx.* is invalid: File name too long"):
        check("x" * 300)


def test_tilde_is_expanded(scratch, monkeypatch):
    monkeypatch.setenv("HOME", str(scratch / "adir"))
    assert check_output_folder("~/runs") == scratch / "adir" / "runs"
    assert check_output_file("~/c.png", suffix=".png") == scratch / "adir" / "c.png"


@pytest.mark.parametrize("check", [check_output_folder, check_output_file])
def test_broken_symlink_is_rejected(scratch, check):
    (scratch / "dangling").symlink_to(scratch / "missing")
    with pytest.raises(ValueError, match=r"'dangling' is invalid: it is a symbolic link to"):
        check("dangling")


def test_atomic_write_replaces_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    write_json_atomic(path, {"mean": np.float32(0.5), "count": np.int64(3)})
    assert json.loads(path.read_text()) == {"mean": 0.5, "count": 3}
    assert sorted(item.name for item in tmp_path.iterdir()) == ["summary.json"]


def test_failed_atomic_write_keeps_old_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(TypeError, match="cannot write object to JSON"):
        write_json_atomic(path, {"value": object()})
    with pytest.raises(TypeError):
        write_bytes_atomic(path, "text, not bytes")
    assert path.read_text() == "old"
    assert sorted(item.name for item in tmp_path.iterdir()) == ["summary.json"]


def test_atomic_write_into_folder_fails(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "taken", "x")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["taken"]


def test_saved_figure_follows_the_suffix(tmp_path):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    save_figure_atomic(figure, tmp_path / "curves.png", dpi=20)
    save_figure_atomic(figure, tmp_path / "curves.pdf")
    plt.close(figure)
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")
    assert len(list(tmp_path.iterdir())) == 2


def test_atomic_write_new_file_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o644


def test_atomic_write_keeps_mode_and_link(tmp_path):
    target = tmp_path / "real.yaml"
    target.write_text("old")
    target.chmod(0o600)
    link = tmp_path / "config.yaml"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink()
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(item.name for item in tmp_path.iterdir()) == ["config.yaml", "real.yaml"]


def test_json_safe_numpy_floats(tmp_path):
    document = {"nan": np.float32("nan"), "inf": [np.float16("inf")], "finite": np.float32(0.5)}
    safe = json_safe(document)
    assert safe["nan"] is None
    assert safe["inf"] == [None]
    assert safe["finite"] == 0.5
    path = tmp_path / "summary.json"
    write_json_atomic(path, safe, allow_nan=False)
    assert json.loads(path.read_text()) == {"nan": None, "inf": [None], "finite": 0.5}
