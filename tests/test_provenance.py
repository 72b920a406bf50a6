"""The code a run came from: its commit and a digest of every uncommitted change, new files included."""

from __future__ import annotations

import subprocess

import pytest

from lenet_sweep.provenance import code_version


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def checkout(tmp_path):
    """A committed checkout laid out as this one: the package, and conf/ beside it."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "models.py").write_text("WIDTH = 6\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / ".gitignore").write_text("__pycache__/\n*.log\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "initial")
    return tmp_path


def test_a_clean_checkout_has_its_commit_and_no_changes(checkout):
    version = code_version(checkout / "pkg")
    assert version.commit == git(checkout, "rev-parse", "HEAD").strip() and version.clean


def test_an_untracked_module_is_a_change_and_its_content_counts(checkout):
    new_module = checkout / "pkg" / "augment.py"
    new_module.write_text("FLIP = True\n")
    first = code_version(checkout / "pkg")
    assert not first.clean and first.dirty_digest
    new_module.write_text("FLIP = False\n")
    assert code_version(checkout / "pkg").dirty_digest not in (None, first.dirty_digest)
    (checkout / "conf" / "extra.yaml").write_text("lr: 0.1\n")
    assert code_version(checkout / "pkg").dirty_digest not in (None, first.dirty_digest)


def test_ignored_files_and_files_outside_the_package_are_not_changes(checkout):
    (checkout / "pkg" / "__pycache__").mkdir()
    (checkout / "pkg" / "__pycache__" / "models.cpython-311.pyc").write_bytes(b"\0")
    (checkout / "pkg" / "train.log").write_text("epoch 1\n")
    (checkout / "notes.md").write_text("not code\n")
    assert code_version(checkout / "pkg").clean


def test_a_modified_tracked_file_is_a_change(checkout):
    (checkout / "pkg" / "models.py").write_text("WIDTH = 16\n")
    assert code_version(checkout / "pkg").dirty_digest
