"""Verify resolved pipelines: pins, Ed25519 signatures (see :mod:`safeloader.verify.signatures`), lockfiles."""

from safeloader.verify.lockfile import DEFAULT_LOCKFILE, LockedPipeline, read_lockfile, render_lockfile
from safeloader.verify.signatures import SIGNATURE_FILE, generate_keypair, key_id, sign_manifest
from safeloader.verify.verifier import VerificationResult, verify_manifest

__all__ = [
    "DEFAULT_LOCKFILE",
    "SIGNATURE_FILE",
    "LockedPipeline",
    "VerificationResult",
    "generate_keypair",
    "key_id",
    "read_lockfile",
    "render_lockfile",
    "sign_manifest",
    "verify_manifest",
]
