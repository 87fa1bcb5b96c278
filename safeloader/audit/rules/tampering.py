"""SL9xx (SL90x, SL92x): persistence, tampering with the interpreter or the install, and signals."""

from __future__ import annotations

import ast

from safeloader.audit.rules.base import Family, Hit, Resolver, Rule

FAMILY = "tampering"

RULES = (
    Rule("SL901", "persistence-path", "high", 506, "refers to {detail}, a login, cron or autostart file", FAMILY),
    Rule(
        "SL902",
        "site-packages-tampering",
        "high",
        506,
        "refers to {detail}, which makes Python run code at every start",
        FAMILY,
    ),
    Rule("SL903", "self-modification", "high", 506, "writes to its own source file through {detail}", FAMILY),
    Rule("SL904", "interpreter-tampering", "high", 506, "rewrites interpreter state through {detail}", FAMILY),
    Rule("SL921", "signal-send", "high", 284, "sends a signal to a process through {detail}", FAMILY),
    Rule("SL922", "signal-handler", "medium", 284, "installs signal handlers or timers through {detail}", FAMILY),
)

_PERSISTENCE_FRAGMENTS = (
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".zshrc",
    ".zprofile",
    ".profile",
    "authorized_keys",
    "/etc/cron",
    "crontab",
    ".config/autostart",
    "/etc/profile",
    "/etc/rc.local",
    "systemd/user",
    "/etc/systemd",
    "ld.so.preload",
    "/etc/init.d",
    ".xinitrc",
    "launchagents",
)
_SITE_FRAGMENTS = ("site-packages", "dist-packages", "sitecustomize", "usercustomize")
_WRITE_MODES = frozenset("wax+")
_WRITE_METHODS = frozenset({"write_text", "write_bytes", "unlink", "rename", "replace", "touch", "symlink_to"})


def persistence_strings(value: str) -> list[Hit]:
    lowered = value.lower()
    if len(lowered) > 4096:
        return []
    hits: list[Hit] = []
    if "." in lowered or "/" in lowered:
        for fragment in _PERSISTENCE_FRAGMENTS:
            if fragment in lowered:
                hits.append(("SL901", repr(value[:80])))
                break
    for fragment in _SITE_FRAGMENTS:
        if fragment in lowered:
            hits.append(("SL902", repr(value[:80])))
            break
    return hits


def _mentions_own_file(node: ast.expr) -> bool:
    return any(isinstance(sub, ast.Name) and sub.id == "__file__" for sub in ast.walk(node))


def _open_for_write(call: ast.Call, resolver: Resolver) -> list[Hit]:
    if not call.args:
        return []
    mode = call.args[1] if len(call.args) >= 2 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    mode_text = resolver.fold(mode) if mode is not None else "r"
    writing = mode_text is None or bool(_WRITE_MODES & set(mode_text))
    if not writing:
        return []
    hits: list[Hit] = []
    if _mentions_own_file(call.args[0]):
        hits.append(("SL903", "open(__file__)"))
    target = resolver.fold(call.args[0])
    if target is not None and target.endswith(".pth"):
        hits.append(("SL902", repr(target[:80])))
    return hits


def _copy_onto_own_file(call: ast.Call, resolver: Resolver) -> list[Hit]:
    if len(call.args) >= 2 and _mentions_own_file(call.args[1]):
        return [("SL903", "a copy onto __file__")]
    return []


def write_method_on_own_file(method: str, receiver: ast.expr) -> list[Hit]:
    """``Path(__file__).write_text(...)`` and friends; called by the analyzer for method calls."""
    if method in _WRITE_METHODS and _mentions_own_file(receiver):
        return [("SL903", f"Path(__file__).{method}")]
    return []


FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    modules={"signal": "SL922"},
    references={
        "os.kill": "SL921",
        "os.killpg": "SL921",
        "signal.pthread_kill": "SL921",
        "signal.raise_signal": "SL921",
        "signal.signal": "SL922",
        "signal.alarm": "SL922",
        "signal.setitimer": "SL922",
        "site.getsitepackages": "SL902",
        "site.getusersitepackages": "SL902",
        "site.addsitedir": "SL902",
        "site.USER_SITE": "SL902",
        "sysconfig.get_paths": "SL902",
        "sys.addaudithook": "SL904",
    },
    call_checks={
        "open": _open_for_write,
        "io.open": _open_for_write,
        "os.open": _open_for_write,
        "shutil.copy": _copy_onto_own_file,
        "shutil.copyfile": _copy_onto_own_file,
        "shutil.move": _copy_onto_own_file,
        "os.replace": _copy_onto_own_file,
        "os.rename": _copy_onto_own_file,
    },
    string_checks=(persistence_strings,),
)
