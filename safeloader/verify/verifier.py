"""Check a resolved manifest against the policy: pin, signature and lockfile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safeloader.errors import IntegrityError, SignatureRequiredError, UnknownKeyError, UnpinnedRevisionError
from safeloader.policy import Policy
from safeloader.resolve.manifest import Manifest, sha256_hex
from safeloader.verify.lockfile import check_drift, find_locked, read_lockfile
from safeloader.verify.signatures import SIGNATURE_FILE, verify_signatures


@dataclass(frozen=True)
class VerificationResult:
    #: The caller asked for the exact commit that was fetched (always True for local sources).
    pinned: bool
    #: ``ed25519:<base64>`` of the trusted key whose signature verified, else ``None``.
    signature_key: str | None
    #: True when a lockfile was given and matched; ``None`` when no lockfile was used.
    lockfile_matched: bool | None


def _is_local(manifest: Manifest) -> bool:
    return manifest.source in ("local_dir", "local_file")


def verify_manifest(
    manifest: Manifest, policy: Policy, *, lockfile: Path | None = None, spec: str | None = None
) -> VerificationResult:
    """Enforce ``[sources]`` pin and signature rules and an optional lockfile on ``manifest``.

    ``spec`` picks the lockfile entry (default: the manifest's source id, then any entry with the same
    source id). Signatures are checked whenever the pipeline carries one (a bad signature is never
    ignored), and required when ``require_signature`` is set.
    """
    pinned = _is_local(manifest) or manifest.pinned
    if policy.sources.require_pinned_revision and not pinned:
        raise UnpinnedRevisionError(
            f"policy {policy.name!r} requires a pinned commit but {manifest.source_id} was requested at "
            f"{manifest.requested_revision or 'the default branch'!r}; pass revision={manifest.commit!r}."
        )

    signature_key: str | None = None
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
    return VerificationResult(pinned=pinned, signature_key=signature_key, lockfile_matched=lockfile_matched)
