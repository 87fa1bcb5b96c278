"""Environment layer: the worker starts from an allow list, never from the caller's environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from safeloader.errors import SandboxError
from safeloader.policy.schema import SandboxPolicy
from safeloader.sandbox.report import LayerStatus

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Names copied from the caller when set; nothing else is, unless the policy's ``env_allow`` names it.
PASSED_THROUGH = ("LANG", "LC_ALL")
#: Passed with ``[sandbox] gpu = true``: where the driver's libraries are and which devices to use.
GPU_PASSED_THROUGH = ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")
#: Names that look like credentials are refused even when ``env_allow`` lists them: a policy typo must not
#: hand a token to untrusted code.
_CREDENTIAL_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|^AWS_|^HF_)", re.I)


def worker_environment(
    policy: SandboxPolicy,
    *,
    home: Path,
    tmpdir: Path,
    thread_env: Mapping[str, str],
    caller_env: Mapping[str, str],
    extra: Mapping[str, str] | None,
) -> dict[str, str]:
    """Build the worker's whole environment; ``extra`` (from safeloader itself) is trusted and wins."""
    # USER/LOGNAME: the worker uid has no passwd entry, and getpass.getuser() (torch's inductor calls it at
    # import) raises KeyError unless one of them is set.
    env = {"PATH": SAFE_PATH, "HOME": str(home), "TMPDIR": str(tmpdir), "USER": "safeloader", "LOGNAME": "safeloader"}
    for name in (*PASSED_THROUGH, *(GPU_PASSED_THROUGH if policy.gpu else ())):
        if name in caller_env:
            env[name] = caller_env[name]
    env.setdefault("LANG", "C.UTF-8")
    for name in policy.env_allow:
        if _CREDENTIAL_NAME.search(name):
            raise SandboxError(
                f"policy 'sandbox.env_allow' names {name!r}, which looks like a credential and is never passed to "
                "the worker; remove it from env_allow."
            )
        if name in caller_env:
            env[name] = caller_env[name]
    env.update(thread_env)
    env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"})
    env.update(extra or {})
    return env


def status(env: Mapping[str, str], required: bool) -> LayerStatus:
    names = ", ".join(sorted(name for name in env if name != "SAFELOADER_SANDBOX"))
    return LayerStatus("environment", True, f"allow list only ({names}); HOME is an empty private dir", required)
