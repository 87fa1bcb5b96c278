"""Paths as a user types them: ``~`` and ``~name`` expanded as a shell expands them.

``pathlib.Path.expanduser`` raises ``RuntimeError`` for ``~name`` when there is no user ``name`` (and for ``~``
without a home directory), which would escape safeloader's errors from a policy's ``extends``, a model path or
``$SAFELOADER_CACHE``. A shell leaves such a word as written, and so does this: the path then simply does not
exist, and the caller's own "does not exist" error names it.
"""

from __future__ import annotations

import os
from pathlib import Path


def expand_user(path: str | os.PathLike[str]) -> Path:
    """``path`` with a leading ``~`` or ``~name`` expanded; left as written when it names no known home."""
    return Path(os.path.expanduser(os.fspath(path)))
