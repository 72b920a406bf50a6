"""What produced a run: the code (git commit, and a digest of uncommitted changes), the data, torch.

Recorded as tags on every run, so a relaunch can tell results of the same code
and data from results of other code (``plan.decide``).
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lenet_sweep.store import MLFLOW_GIT_COMMIT, Run

PACKAGE_DIR = Path(__file__).resolve().parent
DIRTY_TAG = "git_dirty"  # digest of the uncommitted changes (untracked files too) when there were any, else empty
DATA_DIGEST_TAG = "data_digest"
TORCH_TAG = "torch_version"


@dataclass(frozen=True)
class CodeVersion:
    commit: str | None  # None: not run from a git checkout (an installed wheel)
    dirty_digest: str | None = None

    @property
    def clean(self) -> bool:
        return self.commit is not None and self.dirty_digest is None

    def describe(self) -> str:
        if self.commit is None:
            return "no git commit"
        return self.commit[:10] + (f"+changes {self.dirty_digest[:8]}" if self.dirty_digest else "")


@dataclass(frozen=True)
class Provenance:
    code: CodeVersion
    data_digest: str | None

    def tags(self) -> dict[str, str]:
        tags = {DIRTY_TAG: self.code.dirty_digest or "", TORCH_TAG: torch.__version__}
        if self.code.commit:
            tags[MLFLOW_GIT_COMMIT] = self.code.commit
        if self.data_digest:
            tags[DATA_DIGEST_TAG] = self.data_digest
        return tags

    def same_data_as(self, run: Run) -> bool:
        """False only when both digests are known and differ (runs from before digests were recorded match)."""
        theirs = run.data.tags.get(DATA_DIGEST_TAG)
        return not (theirs and self.data_digest and theirs != self.data_digest)


def code_of_run(run: Run) -> CodeVersion:
    tags: Mapping[str, str] = run.data.tags
    return CodeVersion(tags.get(MLFLOW_GIT_COMMIT) or None, tags.get(DIRTY_TAG) or None)


def _git(directory: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.decode(errors="replace")


def code_version(package_dir: Path = PACKAGE_DIR) -> CodeVersion:
    """The git commit of the checkout ``package_dir`` (this package) is in, and a digest of its uncommitted changes.

    The changes are ``git diff HEAD`` plus every untracked file git does not ignore, under the
    package and ``conf/`` beside it: a new module is a change too. A package that git does not
    track (an installed wheel, even one inside some other repository's virtual environment) has no commit.
    """
    if _git(package_dir, "ls-files", "--error-unmatch", "__init__.py") is None:
        return CodeVersion(None)
    commit = (_git(package_dir, "rev-parse", "HEAD") or "").strip() or None
    digest = hashlib.sha256((_git(package_dir, "diff", "HEAD", "--", ".", "../conf") or "").encode())
    listed = _git(package_dir, "ls-files", "-z", "--others", "--exclude-standard", "--", ".", "../conf") or ""
    for name in sorted(filter(None, listed.split("\0"))):
        digest.update(f"\0new file {name}\0".encode())
        try:
            digest.update((package_dir / name).read_bytes())
        except OSError:  # gone since git listed it
            pass
    changed = digest.hexdigest() != hashlib.sha256(b"").hexdigest()
    return CodeVersion(commit, digest.hexdigest()[:16] if changed else None)
