"""Which cgroup v2 group a worker's group goes under, decided on a copy of a v2 hierarchy's layout.

These machines have no cgroup v2 memory controller, so the kernel's side (limits enforced, tasks moved) is
tested on the v1 hierarchies in ``test_sandbox_bounds.py``; here a directory tree stands in for
``/sys/fs/cgroup`` and ``/proc/self/{mountinfo,cgroup}`` say what a systemd host would, so the decision and
the files written can be checked. The tree is plain files: what it cannot show is the kernel refusing a move.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safeloader.sandbox import cgroups

SESSION = "/user.slice/user-0.slice/session-1.scope"


def _host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_group: str, *, mount_root: str = "/") -> Path:
    """A systemd-like v2 hierarchy under ``tmp_path`` with the caller in ``own_group``; returns its mount point."""
    mount = tmp_path / "cgroup"
    inside = own_group if mount_root == "/" else own_group[len(mount_root) :]
    parts = [part for part in inside.split("/") if part]
    directories = [mount, *(mount.joinpath(*parts[:depth]) for depth in range(1, len(parts) + 1))]
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
        # Controllers are handed on along the path, but never out of the group that holds the caller: a group
        # with processes in it cannot enable them for children (the no-internal-process rule).
        holds_caller = bool(parts) and directory == directories[-1]
        (directory / "cgroup.subtree_control").write_text("" if holds_caller else "cpu io memory pids\n")
        (directory / "cgroup.procs").write_text("")
    real_mkdir = Path.mkdir

    def cgroupfs_mkdir(self: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        # As cgroupfs does, a new group comes with its interface files, and the controllers its parent hands on.
        new = not self.exists()
        real_mkdir(self, mode, parents, exist_ok)
        if new and mount in self.parents:
            handed_on = (self.parent / "cgroup.subtree_control").read_text().replace("+", "")
            (self / "cgroup.controllers").write_text(handed_on)
            (self / "cgroup.subtree_control").write_text("")
            (self / "cgroup.procs").write_text("")

    monkeypatch.setattr(Path, "mkdir", cgroupfs_mkdir)
    monkeypatch.setattr(cgroups, "_mounts", lambda: [(mount_root, str(mount), "cgroup2", "rw")])
    monkeypatch.setattr(cgroups, "_own_groups", lambda: {"": own_group})
    return mount


def test_a_root_caller_in_a_session_scope_gets_its_groups_under_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = _host(tmp_path, monkeypatch, SESSION)
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    hierarchy, reason = cgroups.detect()

    assert reason == ""
    assert hierarchy == cgroups.Hierarchy(2, mount / "safeloader", mount / "safeloader")
    group = cgroups.create(512 << 20, 40)
    assert group.version == 2
    assert group.memory_dir == group.pids_dir
    assert group.memory_dir.parent == mount / "safeloader"
    assert group.memory_dir.name.startswith(f"{cgroups.GROUP_PREFIX}{os.getpid()}-")
    # The root hands both controllers to /safeloader, which hands them to the worker's group.
    assert (mount / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (mount / "safeloader" / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (group.memory_dir / "memory.max").read_text() == str(512 << 20)
    assert (group.memory_dir / "pids.max").read_text() == "40"
    assert group.procs_files == [str(group.memory_dir / "cgroup.procs")]
    # Nothing is written into the caller's own group.
    assert (mount / SESSION.lstrip("/") / "cgroup.subtree_control").read_text() == ""


def test_a_caller_in_the_root_group_gets_its_groups_under_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = _host(tmp_path, monkeypatch, "/")

    assert cgroups.detect() == (cgroups.Hierarchy(2, mount / "safeloader", mount / "safeloader"), "")


def test_an_unprivileged_caller_in_a_session_scope_gets_no_group_and_is_told_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host(tmp_path, monkeypatch, SESSION)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    hierarchy, reason = cgroups.detect()

    assert hierarchy is None
    assert f"the caller's cgroup v2 group {SESSION} does not delegate memory and pids to children" in reason
    with pytest.raises(OSError, match="does not delegate memory and pids"):
        cgroups.create(512 << 20, 40)


def test_a_root_caller_that_cannot_see_the_hierarchys_root_gets_no_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cgroup namespace or bind mount showing only part of the hierarchy: the root's cgroup.procs, which a move
    # out of the caller's group needs, is not there to write to.
    _host(tmp_path, monkeypatch, SESSION, mount_root="/user.slice")
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    hierarchy, reason = cgroups.detect()

    assert hierarchy is None
    assert "does not delegate memory and pids" in reason


def test_a_hierarchy_without_the_memory_controller_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount = _host(tmp_path, monkeypatch, SESSION)
    (mount / SESSION.lstrip("/") / "cgroup.controllers").write_text("cpu io pids\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    hierarchy, reason = cgroups.detect()

    assert hierarchy is None
    assert "offers only [cpu io pids] here, not memory and pids" in reason
