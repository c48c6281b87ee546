"""Model slots on disk: verified bundles by manifest sha256, and two symlinks that pick among them.

::

    models/
      3f2a…/            a verified bundle (named by the sha256 of its manifest.json)
      91bc…/            another one
      91bc….partial/    an update being unpacked: never pointed to, wiped on the next try
      current -> 91bc…  what the agent runs; absent: the provisioned (factory) bundle
      previous -> 3f2a… what it ran before the last switch

A switch is one ``rename`` of a fresh symlink over ``current`` plus an fsync of the folder, so
a power cut leaves ``current`` on the old slot or the new one, both whole and verified. The
previous slot stays until the next successful update has switched (`collect`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
from pathlib import Path

from fleet_protocol import MANIFEST_FILE

log = logging.getLogger(__name__)

CURRENT, PREVIOUS = "current", "previous"


def manifest_sha256(bundle: Path) -> str:
    """The sha256 of a bundle's ``manifest.json`` bytes: what a desired state names."""
    return hashlib.sha256((bundle / MANIFEST_FILE).read_bytes()).hexdigest()


class Slots:
    def __init__(self, root: Path, factory: Path) -> None:
        self.root = root
        self.factory = factory

    def slot(self, sha256: str) -> Path:
        return self.root / sha256

    def partial(self, sha256: str) -> Path:
        return self.root / f"{sha256}.partial"

    def _target(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        return self.root / os.readlink(link)

    def active(self) -> Path:
        """The bundle to run: ``current``'s slot, or the provisioned one."""
        return self._target(CURRENT) or self.factory

    def previous(self) -> Path | None:
        """What ran before the last switch (the provisioned bundle counts), if it is not the active one."""
        target = self._target(PREVIOUS)
        if target is None and self._target(CURRENT) is not None:
            target = self.factory
        return target if target is not None and target != self.active() else None

    def candidates(self) -> list[Path]:
        """Bundles to try at start, best first: active, previous, provisioned."""
        out: list[Path] = []
        for path in (self.active(), self._target(PREVIOUS), self.factory):
            if path is not None and path not in out:
                out.append(path)
        return out

    def unpack(self, archive: Path, sha256: str) -> Path:
        """Extract a downloaded bundle into its partial slot (safe paths only); returns that folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        into = self.partial(sha256)
        if into.exists():
            shutil.rmtree(into)
        into.mkdir()
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(into, filter="data")
        # A bundle is packed either flat or in one top folder.
        entries = list(into.iterdir())
        if not (into / MANIFEST_FILE).exists() and len(entries) == 1 and entries[0].is_dir():
            inner = entries[0]
            for item in inner.iterdir():
                item.rename(into / item.name)
            inner.rmdir()
        _fsync_tree(into)
        return into

    def commit_slot(self, partial: Path, sha256: str) -> Path:
        """A verified partial slot becomes the slot of ``sha256`` (one rename)."""
        final = self.slot(sha256)
        if final.exists():
            shutil.rmtree(partial)
            return final
        partial.rename(final)
        _fsync_dir(self.root)
        return final

    def switch(self, to: Path) -> None:
        """Make ``to`` the active bundle: ``previous`` names what ran, then ``current`` moves."""
        before = self.active()
        if before == to:
            return
        if before != self.factory:
            self._link(PREVIOUS, before)
        else:
            self._unlink(PREVIOUS)  # previous is then the provisioned bundle
        if to == self.factory:
            self._unlink(CURRENT)
        else:
            self._link(CURRENT, to)

    def collect(self) -> None:
        """Delete slots neither link names (after a successful switch), and leftovers of failed tries."""
        keep = {p.name for p in (self._target(CURRENT), self._target(PREVIOUS)) if p is not None}
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            if path.is_symlink() or path.name in keep or path.name.startswith("."):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.suffix in (".part", ".tar"):
                path.unlink(missing_ok=True)

    def _link(self, name: str, to: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(to.name)  # relative: the data folder can move
        os.replace(tmp, self.root / name)
        _fsync_dir(self.root)

    def _unlink(self, name: str) -> None:
        link = self.root / name
        if link.is_symlink():
            link.unlink()
            _fsync_dir(self.root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder of a freshly written tree: a power cut must not leave holes."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))
