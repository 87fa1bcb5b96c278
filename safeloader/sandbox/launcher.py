"""The launcher: ``python -m safeloader.sandbox.launcher CONFIG_JSON``, started by :func:`.spawn.spawn_worker`.

A fresh interpreter (not a fork of the multithreaded caller) that first joins the worker's memory/pids
cgroup (see :mod:`.cgroups`), then, still root: makes a private mount namespace, the capped tmpfs for
HOME and TMPDIR (:mod:`.scratch`) and the worker's mount view; drops to the worker uid; unshares user,
mount, PID, net, IPC, UTS and cgroup namespaces; forks the worker as PID 1 of the new PID namespace; then
waits, killing the worker when the caller goes away (lifeline pipe EOF, and ``PR_SET_PDEATHSIG`` when
spawned from the main thread). The worker child mounts a fresh ``/proc``, volunteers for the OOM killer,
sets every rlimit, arranges fds (0 null, 1-2 the output pipe, 3 IPC socket, 4 the status pipe the
in-worker bootstrap closes), drops capabilities, applies Landlock and execs Python.

Status lines (JSON, one ``write`` each) go to the caller over the status pipe: ``worker_pid``, ``landlock``,
``error``. Exit status mirrors the worker's (a signal death is re-raised on the launcher).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import select
import signal
import sys
from typing import Any, NoReturn

from safeloader.sandbox import _libc, cgroups, filesystem, mountview, privileges, processes, resources, scratch

NAMESPACES = (
    _libc.CLONE_NEWUSER
    | _libc.CLONE_NEWNS
    | _libc.CLONE_NEWPID
    | _libc.CLONE_NEWNET
    | _libc.CLONE_NEWIPC
    | _libc.CLONE_NEWUTS
    | _libc.CLONE_NEWCGROUP
)
IPC_FD, STATUS_FD = 3, 4
#: Where the worker child reports a failure: the inherited status fd until it is moved to STATUS_FD.
_report_fd = -1


def _say(fd: int, **message: Any) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _die_with_parent(config: dict[str, Any]) -> None:
    if config["main_thread"]:
        _libc.prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != config["caller_pid"]:
            os._exit(1)  # the caller is already gone


def _mount_view(config: dict[str, Any]) -> None:
    mountview.make_mounts_private()
    # The capped tmpfs first: covering a hidden directory (gpu mode hides /tmp) binds HOME/TMPDIR back from it.
    if config["scratch"] is not None:
        scratch.mount_scratch(
            config["scratch"]["dir"],
            config["scratch"]["targets"],
            config["uid"],
            config["gid"],
            config["scratch"]["size_mb"],
        )
    mountview.apply(config["covers"], set(config["read_only"]), config["file_binds"], config["uid"], config["gid"])


def _enter_cgroup(config: dict[str, Any]) -> None:
    """Join the worker's memory/pids group before anything forks, shielded from the OOM killer.

    When the kernel refuses the move, a group the policy requires ends the start; one it does not require is
    given up, and the caller is told so that it reports the layer off.
    """
    if not config["cgroup_procs"]:
        return
    try:
        cgroups.join(config["cgroup_procs"])
    except OSError as exc:
        if config["cgroup_required"]:
            raise OSError(
                f"the sandbox layer 'cgroup' is required by the policy but joining the worker's cgroup failed "
                f"({exc}); remove 'cgroup' from 'sandbox.require' in your policy to run without it"
            ) from exc
        config["cgroup_procs"] = None  # no group: the worker has no OOM killer of its own to volunteer for
        _say(config["status_fd"], cgroup_error=f"joining the worker's cgroup failed ({exc})")
        return
    cgroups.shield_from_oom_killer()


def _exec_worker(config: dict[str, Any], sock: int, status: int) -> NoReturn:
    _libc.prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if config["namespaces"]:
        processes.mount_fresh_proc()
    if config["cgroup_procs"]:
        cgroups.volunteer_for_oom_killer()  # the launcher is shielded: the OOM killer takes the worker
    resources.apply_rlimits(config["rlimits"])
    # Arrange fds before Landlock: opens after it are checked, and only 0-4 may survive exec.
    # Copies above the targets first, so that no dup2 below is a no-op that keeps a close-on-exec flag.
    high_sock, high_status = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (sock, status))
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(high_sock, IPC_FD)
    os.dup2(high_status, STATUS_FD)
    global _report_fd
    _report_fd = STATUS_FD
    os.closerange(STATUS_FD + 1, os.sysconf("SC_OPEN_MAX"))
    if config["namespaces"]:
        privileges.drop_capabilities()
    else:
        _libc.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1)
    if config["landlock"] is not None:
        _say(STATUS_FD, landlock=filesystem.restrict_self(config["landlock"]))
    os.chdir(config["cwd"])
    os.execve(config["argv"][0], config["argv"], config["env"])


def _wait_for(child: int, lifeline: int) -> NoReturn:
    pidfd = os.pidfd_open(child)
    poller = select.poll()
    poller.register(lifeline, select.POLLIN | select.POLLHUP)
    poller.register(pidfd, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if lifeline in ready and pidfd not in ready:
            os.kill(child, signal.SIGKILL)  # the caller is gone: nothing may outlive it
        if pidfd in ready:
            break
    _, wait_status = os.waitpid(child, 0)
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # these two cannot (and need not) be reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(wait_status) & 0xFF)


def run(config: dict[str, Any]) -> NoReturn:
    status, sock, lifeline = config["status_fd"], config["sock_fd"], config["lifeline_fd"]
    uid, gid = config["uid"], config["gid"]
    # The launcher re-raises the worker's fatal signal on itself: that must never write a core file.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _die_with_parent(config)
    _enter_cgroup(config)
    if config["as_root"]:
        _libc.unshare(_libc.CLONE_NEWNS)
        _mount_view(config)
        privileges.drop_to(uid, gid)
        _die_with_parent(config)  # the uid change cleared the death signal
    if config["namespaces"]:
        _libc.unshare(NAMESPACES)
        privileges.write_id_maps(uid, gid)
        if not config["as_root"]:
            _mount_view(config)
    global _report_fd
    _report_fd = status
    child = os.fork()
    if child == 0:
        try:
            _exec_worker(config, sock, status)
        except BaseException as exc:
            _say(_report_fd, error=str(exc))
            os._exit(127)
    _say(status, worker_pid=child)
    for fd in (sock, status):
        os.close(fd)
    if config["namespaces"]:
        privileges.drop_capabilities()
    _wait_for(child, lifeline)


def main() -> None:
    config = json.loads(sys.argv[1])
    try:
        run(config)
    except BaseException as exc:
        # The status pipe is closed once the worker runs; the exit code still tells the caller.
        with contextlib.suppress(OSError):
            _say(config["status_fd"], error=str(exc))
        os._exit(127)


if __name__ == "__main__":
    main()
