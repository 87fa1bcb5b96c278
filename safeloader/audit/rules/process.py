"""SL2xx: starting other programs."""

from __future__ import annotations

from safeloader.audit.rules.base import Family, Rule

FAMILY = "process"

RULES = (
    Rule(
        "SL201",
        "process-module",
        "high",
        78,
        "imports {detail}, a module whose purpose is to start other programs",
        FAMILY,
    ),
    Rule("SL202", "process-execution", "critical", 78, "starts another program through {detail}", FAMILY),
    Rule("SL203", "process-fork", "high", 400, "forks the process through {detail}", FAMILY),
)

#: ``os`` functions that start another program; the static rules and the runtime guards share this list.
OS_PROGRAM_STARTERS = (
    "system",
    "popen",
    "execl",
    "execle",
    "execlp",
    "execlpe",
    "execv",
    "execve",
    "execvp",
    "execvpe",
    "spawnl",
    "spawnle",
    "spawnlp",
    "spawnlpe",
    "spawnv",
    "spawnve",
    "spawnvp",
    "spawnvpe",
    "posix_spawn",
    "posix_spawnp",
    "startfile",
)

_OS_EXEC = [f"os.{name}" for name in OS_PROGRAM_STARTERS]

FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    modules={
        "subprocess": "SL201",
        "pty": "SL201",
        "multiprocessing": "SL201",
        "commands": "SL201",
        "asyncio.subprocess": "SL201",
        "sh": "SL201",
        "pexpect": "SL201",
        "plumbum": "SL201",
    },
    references={
        **{name: "SL202" for name in _OS_EXEC},
        "os.fork": "SL203",
        "os.forkpty": "SL203",
        "pty.fork": "SL203",
        "asyncio.create_subprocess_exec": "SL202",
        "asyncio.create_subprocess_shell": "SL202",
        "platform.popen": "SL202",
    },
    reference_prefixes={
        "subprocess": "SL202",
        "pty": "SL202",
        "multiprocessing": "SL202",
        "sh": "SL202",
        "pexpect": "SL202",
    },
)
