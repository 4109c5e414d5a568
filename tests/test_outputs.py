"""Output path checks shared by the scripts: bad --out values fail before any work."""

import os

import pytest

from rlli_jax.outputs import check_output_file, check_output_folder


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
