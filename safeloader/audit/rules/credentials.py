"""SL8xx: reading credentials — key files, secret-named environment variables, other processes' memory,
the Hugging Face token and cache."""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

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
    Rule(
        "SL805",
        "secret-environment-scan",
        "high",
        526,
        "searches the environment for secret-looking names ({detail})",
        FAMILY,
    ),
    Rule(
        "SL806",
        "huggingface-credential-access",
        "high",
        522,
        "reaches the Hugging Face token or cache location through {detail}",
        FAMILY,
    ),
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


#: Environment variables that locate the Hugging Face token or cache (their value is a path to secrets).
HUGGINGFACE_PATH_VARIABLES = frozenset(
    {"HF_HOME", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}
)
_HUGGINGFACE_FRAGMENTS = (".cache/huggingface", "huggingface/hub")
#: One search instead of a loop over fragments: every string literal of every file goes through here.
_ANY_FRAGMENT = re.compile("|".join(re.escape(f) for f in (*_CREDENTIAL_FRAGMENTS, *_HUGGINGFACE_FRAGMENTS, "/proc/")))


def credential_strings(value: str) -> list[Hit]:
    if len(value) > 4096:
        return []
    if value in HUGGINGFACE_PATH_VARIABLES:
        return [("SL806", value)]
    lowered = value.lower()
    if lowered.strip("/~") in _CREDENTIAL_COMPONENTS:
        return [("SL801", repr(value[:80]))]
    if _ANY_FRAGMENT.search(lowered) is None:
        return []
    hits: list[Hit] = []
    if any(fragment in lowered for fragment in _CREDENTIAL_FRAGMENTS):
        hits.append(("SL801", repr(value[:80])))
    elif any(fragment in lowered for fragment in _HUGGINGFACE_FRAGMENTS):
        hits.append(("SL806", repr(value[:80])))
    if "/proc/" in lowered and (lowered.endswith(("/environ", "/mem")) or "/environ" in lowered):
        hits.append(("SL803", repr(value[:80])))
    return hits


#: How code iterates the environment: ``os.environ``, ``os.environ.items()``, ``dict(os.environ)`` …
_ENVIRONMENTS = frozenset({"os.environ", "os.environb"})
_MAPPING_VIEWS = frozenset({"items", "keys", "values", "copy"})
_WRAPPERS = frozenset({"dict", "list", "sorted", "set", "tuple", "iter", "enumerate"})


def _iterates_environment(node: ast.expr, resolver: Resolver, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if resolver.qualname(node) in _ENVIRONMENTS:
        return True
    if isinstance(node, ast.Call) and len(node.args) <= 1:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _MAPPING_VIEWS and not node.args:
            return _iterates_environment(func.value, resolver, depth + 1)
        if isinstance(func, ast.Name) and func.id in _WRAPPERS and node.args:
            return _iterates_environment(node.args[0], resolver, depth + 1)
    return False


def environment_scan(node: ast.For | ast.comprehension, scopes: Sequence[ast.AST], resolver: Resolver) -> list[Hit]:
    """A loop or comprehension over the environment whose body or filter (``scopes``) mentions a secret word:
    ``{k: v for k, v in os.environ.items() if "TOKEN" in k}``, ``for k in os.environ: if k.endswith("_KEY")``."""
    if not _iterates_environment(node.iter, resolver):
        return []
    for scope in scopes:
        for sub in ast.walk(scope):
            text = sub.value if isinstance(sub, ast.Constant) else None
            if isinstance(text, str) and 0 < len(text) <= 64 and is_secret_name(text):
                return [("SL805", repr(text))]
    return []


def _env_read(call: ast.Call, resolver: Resolver) -> list[Hit]:
    if not call.args:
        return []
    name = resolver.fold(call.args[0])
    if name is not None and is_secret_name(name):
        return [("SL802", name)]
    return []


_HUGGINGFACE_CREDENTIAL_REFERENCES = (
    "huggingface_hub.get_token",
    "huggingface_hub.utils.get_token",
    "huggingface_hub.get_stored_tokens",
    "huggingface_hub.utils.get_stored_tokens",
    "huggingface_hub.constants.HF_HOME",
    "huggingface_hub.constants.HF_TOKEN_PATH",
    "huggingface_hub.constants.HF_STORED_TOKENS_PATH",
    "huggingface_hub.constants.HF_HUB_CACHE",
    "huggingface_hub.constants.HUGGINGFACE_HUB_CACHE",
)

FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    reference_prefixes={
        "huggingface_hub.HfFolder": "SL806",
        "huggingface_hub.utils.HfFolder": "SL806",
        "huggingface_hub.hf_api.HfFolder": "SL806",
    },
    references={
        **dict.fromkeys(_HUGGINGFACE_CREDENTIAL_REFERENCES, "SL806"),
        "huggingface_hub.HfFolder": "SL806",
        "huggingface_hub.utils.HfFolder": "SL806",
        "huggingface_hub.hf_api.HfFolder": "SL806",
        "os.environ.copy": "SL804",
        "os.environ.items": "SL804",
        "os.environ.values": "SL804",
        "os.environ.keys": "SL804",
        "os.environb": "SL804",
    },
    call_checks=dict.fromkeys(_ENV_READERS, _env_read),
    string_checks=(credential_strings,),
)
