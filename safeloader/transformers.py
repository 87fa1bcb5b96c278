"""``safeloader.transformers``: transformers' Auto classes and ``pipeline`` with repository code sandboxed.

Same calls as transformers; ``trust_remote_code=True`` runs the repository's ``auto_map`` code only in the
sandboxed worker, after the gate (``[sources]``, pins, lockfile, signatures, audit). Results are remote
stand-ins: tensors and token ids cross, objects stay in the worker::

    from safeloader.transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained("org/model", trust_remote_code=True, policy="acme.toml")
    model = AutoModel.from_pretrained("org/model", trust_remote_code=True, worker=tokenizer)
    hidden = model(**tokenizer("a cat", return_tensors="pt")).last_hidden_state

``worker=`` shares the worker of an object already loaded from the same repository (one sandbox start).
transformers itself is imported only in the worker.
"""

from __future__ import annotations

import os
from typing import Any

from safeloader.automodel import RemoteLoader, load_remote
from safeloader.policy import Policy

__all__ = ["AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoProcessor", "AutoTokenizer", "pipeline"]


class AutoModel(RemoteLoader):
    library = "transformers"
    kind = "AutoModel"
    public_name = "safeloader.transformers.AutoModel"


class AutoModelForCausalLM(RemoteLoader):
    library = "transformers"
    kind = "AutoModelForCausalLM"
    public_name = "safeloader.transformers.AutoModelForCausalLM"


class AutoTokenizer(RemoteLoader):
    library = "transformers"
    kind = "AutoTokenizer"
    public_name = "safeloader.transformers.AutoTokenizer"


class AutoConfig(RemoteLoader):
    library = "transformers"
    kind = "AutoConfig"
    public_name = "safeloader.transformers.AutoConfig"


class AutoProcessor(RemoteLoader):
    library = "transformers"
    kind = "AutoProcessor"
    public_name = "safeloader.transformers.AutoProcessor"


def pipeline(
    task: str | None = None,
    model: str | os.PathLike[str] | None = None,
    *,
    trust_remote_code: bool = False,
    policy: str | os.PathLike[str] | Policy | None = None,
    lockfile: str | os.PathLike[str] | None = None,
    worker: Any = None,
    **kwargs: Any,
) -> Any:
    """``transformers.pipeline(task, model=...)`` built in the worker; call it with text, get data back."""
    if model is None:
        raise TypeError("safeloader.transformers.pipeline needs model= (a local folder or a Hub repo id).")
    return load_remote(
        model,
        library="transformers",
        kind="pipeline",
        task=task,
        subfolder=kwargs.pop("subfolder", None),
        trust_remote_code=trust_remote_code,
        policy=policy,
        lockfile=lockfile,
        worker=worker,
        **kwargs,
    )
