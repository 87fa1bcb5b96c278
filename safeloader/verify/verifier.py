"""Check a resolved manifest against the policy: sources of every file, pin, signature and lockfile.

Signatures, when ``safeloader.sig`` is present:

- with ``require_signature`` or ``trusted_keys`` set, any problem (malformed file, no record over this
  code, a record that does not verify) refuses the load, as does a valid signature by an untrusted key
  when signatures are required;
- otherwise the file is still parsed and checked: a record over exactly this code whose signature does not
  verify under its own key is a forgery and **always refuses** the load (``SignatureError``); a file that
  cannot be parsed, or whose records cover other code, is reported — logged as a warning and recorded in
  :attr:`VerificationResult.signature_warning` (the manifest's ``signature_warning`` note, shown by
  ``safeloader fetch`` and ``safeloader audit``) — since deleting the file would load the same code anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from safeloader.errors import IntegrityError, SignatureRequiredError, UnknownKeyError, UnpinnedRevisionError
from safeloader.policy import Policy
from safeloader.resolve.identity import file_source_ids
from safeloader.resolve.manifest import Manifest, sha256_hex
from safeloader.verify.lockfile import check_drift, find_locked, read_lockfile
from safeloader.verify.signatures import SIGNATURE_FILE, check_self_consistent, verify_signatures

logger = logging.getLogger("safeloader")


@dataclass(frozen=True)
class VerificationResult:
    #: The caller asked for the exact commit that was fetched (always True for local sources).
    pinned: bool
    #: ``ed25519:<base64>`` of the trusted key whose signature verified, else ``None``.
    signature_key: str | None
    #: True when a lockfile was given and matched; ``None`` when no lockfile was used.
    lockfile_matched: bool | None
    #: Why a ``safeloader.sig`` that the policy does not require could not vouch for this code (also logged).
    signature_warning: str | None = None


def _is_local(manifest: Manifest) -> bool:
    return manifest.source in ("local_dir", "local_file")


def verify_manifest(
    manifest: Manifest, policy: Policy, *, lockfile: Path | None = None, spec: str | None = None
) -> VerificationResult:
    """Enforce ``[sources]`` pin and signature rules and an optional lockfile on ``manifest``.

    ``spec`` picks the lockfile entry (default: the manifest's source id, then any entry with the same
    source id). ``[sources]`` allow/deny is applied to every file under its own source id (see
    :mod:`safeloader.resolve.identity`). Signatures are checked whenever the pipeline carries one: a forged
    one always refuses, a malformed or stale one refuses under ``require_signature``/``trusted_keys`` and is
    otherwise reported in ``signature_warning`` (see the module docstring).
    """
    from safeloader.resolve.resolver import check_file_source

    for relpath, own_id in file_source_ids(manifest).items():
        check_file_source(policy, manifest.source_id, own_id, relpath)
    pinned = _is_local(manifest) or manifest.pinned
    if policy.sources.require_pinned_revision and not pinned:
        raise UnpinnedRevisionError(
            f"policy {policy.name!r} requires a pinned commit but {manifest.source_id} was requested at "
            f"{manifest.requested_revision or 'the default branch'!r}; pass revision={manifest.commit!r}."
        )

    signature_key: str | None = None
    signature_warning: str | None = None
    if manifest.signature_sha256 is not None:
        data = manifest.blob_root.joinpath(manifest.signature_sha256[:2], manifest.signature_sha256)
        try:
            raw = data.read_bytes()
        except OSError:
            raw = b""
        if sha256_hex(raw) != manifest.signature_sha256:
            raise IntegrityError(
                f"cached {SIGNATURE_FILE} of {manifest.source_id} does not match its recorded sha256; "
                "delete the cache entry and fetch again."
            )
        if policy.sources.trusted_keys or policy.sources.require_signature:
            try:
                signature_key = verify_signatures(manifest, raw, policy.sources.trusted_keys).key_id
            except UnknownKeyError:
                # A valid signature by someone the policy does not know only matters when one is required.
                if policy.sources.require_signature:
                    raise
        else:
            problem = check_self_consistent(manifest, raw)  # raises SignatureError on a forged record
            if problem is not None:
                signature_warning = (
                    f"{SIGNATURE_FILE} of {manifest.source_id} cannot vouch for this code and was ignored only "
                    f"because the policy requires no signature: {problem}"
                )
                logger.warning("%s", signature_warning)
    elif policy.sources.require_signature:
        raise SignatureRequiredError(
            f"policy {policy.name!r} requires a signature but {manifest.source_id} has no {SIGNATURE_FILE}; "
            "ask its publisher to sign it (`safeloader sign`) or use a policy without require_signature."
        )

    lockfile_matched: bool | None = None
    if lockfile is not None:
        locked_entries = read_lockfile(lockfile)
        key = spec if spec is not None else manifest.source_id
        if key not in locked_entries:
            same_source = [e for e in locked_entries.values() if e.source_id == manifest.source_id]
            if len(same_source) == 1:
                key = same_source[0].spec
        check_drift(find_locked(locked_entries, key, lockfile), manifest)
        lockfile_matched = True
    return VerificationResult(
        pinned=pinned,
        signature_key=signature_key,
        lockfile_matched=lockfile_matched,
        signature_warning=signature_warning,
    )
