"""SL8xx: reading credentials — key files, secret-named environment variables, other processes' memory."""

from __future__ import annotations

import ast

from safeloader.audit.rules.base import Family, Hit, Resolver, Rule

FAMILY = "credentials"

RULES = (
    Rule("SL801", "credential-path", "critical", 522, "refers to the credential location {detail}", FAMILY),
    Rule(
        "SL802", "secret-environment-read", "high", 526, "reads the secret-like environment variable {detail}", FAMILY
    ),
    Rule(
        "SL803",
        "process-memory-path",
        "critical",
        200,
        "refers to {detail}, another process's environment or memory",
        FAMILY,
    ),
    Rule("SL804", "environment-dump", "medium", 526, "reads the whole environment through {detail}", FAMILY),
)

#: Path fragments (lower case) of files that hold credentials.
_CREDENTIAL_FRAGMENTS = (
    ".ssh/",
    "/.ssh",
    ".aws/",
    "/.aws",
    ".netrc",
    "huggingface/token",
    "huggingface/stored_tokens",
    ".git-credentials",
    ".pypirc",
    ".docker/config.json",
    ".kube/config",
    "id_rsa",
    "id_ed25519",
    "id_ecdsa",
    ".gnupg",
    ".config/gcloud",
    ".azure/",
    "/etc/shadow",
)
#: Single path components that only ever name credential stores (``Path.home() / ".ssh"``).
_CREDENTIAL_COMPONENTS = frozenset({".ssh", ".aws", ".netrc", ".gnupg", ".git-credentials", ".pypirc", ".kube"})
_SECRET_WORDS = frozenset(
    {
        "TOKEN",
        "TOKENS",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PWD",
        "CREDENTIAL",
        "CREDENTIALS",
        "APIKEY",
        "AUTH",
        "KEY",
        "PRIVATE",
    }
)
#: Run-together names (``HFTOKEN``, ``MYAPIKEY``); ``KEY`` alone is not a suffix (``MONKEY``).
_SECRET_SUFFIXES = ("TOKEN", "SECRET", "PASSWORD", "APIKEY")
_ENV_READERS = (
    "os.environ.get",
    "os.getenv",
    "os.environ.setdefault",
    "os.environ.pop",
    "os.environb.get",
    "os.getenvb",
)


def is_secret_name(name: str) -> bool:
    """``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``apiKey`` yes; ``MONKEY_LEVEL``, ``LOG_LEVEL`` no."""
    words = "".join(c if c.isalnum() else " " for c in name.upper()).split()
    return any(word in _SECRET_WORDS or word.endswith(_SECRET_SUFFIXES) for word in words)


def credential_strings(value: str) -> list[Hit]:
    lowered = value.lower()
    if len(lowered) > 4096:
        return []
    hits: list[Hit] = []
    if lowered.strip("/~") in _CREDENTIAL_COMPONENTS:
        hits.append(("SL801", repr(value[:80])))
    else:
        for fragment in _CREDENTIAL_FRAGMENTS:
            if fragment in lowered:
                hits.append(("SL801", repr(value[:80])))
                break
    if "/proc/" in lowered and (lowered.endswith(("/environ", "/mem")) or "/environ" in lowered):
        hits.append(("SL803", repr(value[:80])))
    return hits


def _env_read(call: ast.Call, resolver: Resolver) -> list[Hit]:
    if not call.args:
        return []
    name = resolver.fold(call.args[0])
    if name is not None and is_secret_name(name):
        return [("SL802", name)]
    return []


FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    references={
        "os.environ.copy": "SL804",
        "os.environ.items": "SL804",
        "os.environ.values": "SL804",
        "os.environ.keys": "SL804",
        "os.environb": "SL804",
    },
    call_checks=dict.fromkeys(_ENV_READERS, _env_read),
    string_checks=(credential_strings,),
)
