"""Every failure a user can cause ends in a :class:`SafeLoaderError` subclass.

Messages follow one rule: say what happened, then what to do next, in one sentence.
"""

from __future__ import annotations

from safeloader.display import printable


class SafeLoaderError(Exception):
    """Base class of every error safeloader raises on purpose."""


# --- policy -----------------------------------------------------------------------------------


class PolicyError(SafeLoaderError):
    """A policy file is missing, malformed, or names an unknown key or value."""


class PolicyViolation(SafeLoaderError):
    """The request is well-formed but the policy forbids it."""


class SourceDenied(PolicyViolation):
    """The pipeline source is not allowed by the policy's ``[sources]`` table."""


class UnpinnedRevisionError(PolicyViolation):
    """The policy requires a 40-hex commit and a branch or tag was given."""


class SignatureRequiredError(PolicyViolation):
    """The policy requires a signature and the pipeline carries none."""


class RemoteCodeNotTrusted(PolicyViolation):
    """Remote code would run but ``trust_remote_code`` is not set."""


class PickleWeightsRefused(PolicyViolation):
    """The model ships pickle weights and ``[weights] allow_pickle`` is false."""


class AssetFormatRefused(PolicyViolation):
    """A file handed to the sandbox is code, or not in the format its name claims (e.g. a fake safetensors file)."""


class AuditDenied(PolicyViolation):
    """The static audit's verdict is ``deny`` under the policy."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


# --- resolve ----------------------------------------------------------------------------------


class ResolveError(SafeLoaderError):
    """The pipeline could not be located or fetched."""


class InvalidSpecError(ResolveError):
    """The ``custom_pipeline`` value is not a path, repo id or community name."""


class RepoNotFoundError(ResolveError):
    """The Hub repository does not exist or is not accessible."""


class RevisionNotFoundError(ResolveError):
    """The requested branch, tag or commit does not exist in the repository."""


class EntryFileNotFoundError(ResolveError):
    """The repository or directory has no pipeline file where one was expected."""


class PathTraversalError(ResolveError):
    """A file name or relative import would leave the pipeline's root."""


class UnsafeLocalFile(ResolveError):
    """A local model or pipeline folder holds something other than plain files and directories."""


class DownloadError(ResolveError):
    """A download failed or was cut short; nothing was stored."""


# --- verify / cache ---------------------------------------------------------------------------


class IntegrityError(SafeLoaderError):
    """Bytes do not match the hash they were recorded or verified with."""


class LockfileError(SafeLoaderError):
    """A lockfile is missing, malformed, or does not cover the requested pipeline."""


class LockDriftError(IntegrityError):
    """The resolved pipeline differs from what the lockfile pins."""


class SignatureError(SafeLoaderError):
    """A signature is malformed or does not verify."""


class UnknownKeyError(SignatureError):
    """The signature was made by a key the policy does not trust."""


class CacheError(SafeLoaderError):
    """The safeloader cache could not be read or written."""


# --- audit ------------------------------------------------------------------------------------


class AuditError(SafeLoaderError):
    """The audit could not run (unreadable or unparsable input); never treated as clean."""


# --- environment ------------------------------------------------------------------------------


class UnsupportedDiffusersError(SafeLoaderError):
    """The installed diffusers is older than safeloader supports, or its internals are not where expected."""


# --- sandbox and worker -----------------------------------------------------------------------


class SandboxError(SafeLoaderError):
    """A sandbox layer required by the policy could not be set up."""


class WorkerError(SafeLoaderError):
    """The sandboxed worker failed, misbehaved, or sent something invalid."""


class WorkerCrashed(WorkerError):
    """The worker process died.

    ``stderr_tail`` is the worker's last output made safe to print; ``raw_stderr_tail`` is what it wrote.
    """

    def __init__(self, message: str, *, returncode: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(printable(message))
        self.returncode = returncode
        self.raw_stderr_tail = stderr_tail
        self.stderr_tail = printable(stderr_tail, keep="\n\t")


class WorkerTimeout(WorkerError):
    """The worker did not answer within the policy's time limit and was killed."""


class ProtocolError(WorkerError):
    """A message broke the IPC protocol or its limits; the worker was killed."""


class RemoteError(WorkerError):
    """An exception was raised inside the worker; its type and traceback arrive as text.

    The message, ``type_name`` and ``traceback_text`` are safe to print (control, bidi and invisible
    characters escaped); ``raw_message``, ``raw_type_name`` and ``raw_traceback_text`` are what the worker sent.
    """

    def __init__(self, message: str, *, type_name: str = "", traceback_text: str = "", raw_message: str = "") -> None:
        super().__init__(printable(message))
        self.raw_message = raw_message
        self.raw_type_name = type_name
        self.raw_traceback_text = traceback_text
        self.type_name = printable(type_name)
        self.traceback_text = printable(traceback_text, keep="\n\t")


class OutputRefused(WorkerError):
    """Files the worker wrote cannot be copied back: not regular files, a path outside the folder, over the cap."""


class UnsupportedValueError(WorkerError):
    """A value cannot cross the IPC boundary: its type is not data, or it is over a limit."""
