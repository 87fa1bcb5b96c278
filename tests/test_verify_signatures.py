"""Ed25519 signatures: keygen, sign, verification under require_signature / trusted_keys."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from safeloader.cli import main
from safeloader.errors import SignatureError, SignatureRequiredError, UnknownKeyError
from safeloader.policy import Policy, load_policy, with_overrides
from safeloader.resolve import resolve_pipeline
from safeloader.verify.signatures import (
    SIGNATURE_FILE,
    add_signature,
    generate_keypair,
    load_private_key,
    sign_manifest,
)
from tests.fixtures.hub_server import LoopbackHub

CODE = {"pipeline.py": b"from .helpers import h\n", "helpers.py": b"def h(): return 1\n"}


def requiring(*keys: str) -> Policy:
    return with_overrides(load_policy("default"), sources={"require_signature": True, "trusted_keys": keys})


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, str]:
    private, _public, key = generate_keypair(tmp_path / "keys" / "signer")
    return private, key


def signed_repo(hub: LoopbackHub, private: Path, repo: str = "org/pipe") -> str:
    """Publish CODE, sign what was published, then commit the signature next to it (like a publisher would)."""
    hub.create_repo(repo, CODE)
    manifest = resolve_pipeline(repo, policy=load_policy("default"))
    record = sign_manifest(manifest, load_private_key(private))
    return hub.commit(repo, {**CODE, SIGNATURE_FILE: add_signature(None, record)})


def test_valid_signature_by_trusted_key(loopback_hub: LoopbackHub, signer: tuple[Path, str]) -> None:
    private, key = signer
    sha = signed_repo(loopback_hub, private)
    manifest = resolve_pipeline("org/pipe", revision=sha, policy=requiring(key))
    assert manifest.notes["signature_key"] == key
    assert SIGNATURE_FILE not in manifest.files and manifest.signature_sha256 is not None


def test_trusted_key_as_pem_path(loopback_hub: LoopbackHub, signer: tuple[Path, str]) -> None:
    private, key = signer
    sha = signed_repo(loopback_hub, private)
    public_pem = private.with_name("signer.pub")
    manifest = resolve_pipeline("org/pipe", revision=sha, policy=requiring(str(public_pem)))
    assert manifest.notes["signature_key"] == key


def test_missing_signature_when_required(loopback_hub: LoopbackHub, signer: tuple[Path, str]) -> None:
    sha = loopback_hub.create_repo("org/pipe", CODE)
    with pytest.raises(SignatureRequiredError, match=SIGNATURE_FILE):
        resolve_pipeline("org/pipe", revision=sha, policy=requiring(signer[1]))


def test_unknown_key(loopback_hub: LoopbackHub, signer: tuple[Path, str], tmp_path: Path) -> None:
    private, _key = signer
    _other_private, _pub, other_key = generate_keypair(tmp_path / "other")
    sha = signed_repo(loopback_hub, private)
    with pytest.raises(UnknownKeyError, match="trusted_keys"):
        resolve_pipeline("org/pipe", revision=sha, policy=requiring(other_key))


def test_wrong_signature(loopback_hub: LoopbackHub, signer: tuple[Path, str]) -> None:
    private, key = signer
    sha = signed_repo(loopback_hub, private)
    body = json.loads(loopback_hub._repos[("model", "org/pipe")].commits[sha][SIGNATURE_FILE])
    forged = bytearray(base64.b64decode(body["signatures"][0]["signature"]))
    forged[0] ^= 1
    body["signatures"][0]["signature"] = base64.b64encode(bytes(forged)).decode()
    bad = loopback_hub.commit("org/pipe", {**CODE, SIGNATURE_FILE: json.dumps(body).encode()})
    with pytest.raises(SignatureError, match="does not verify"):
        resolve_pipeline("org/pipe", revision=bad, policy=requiring(key))


def test_code_changed_after_signing(loopback_hub: LoopbackHub, signer: tuple[Path, str]) -> None:
    private, key = signer
    sha = signed_repo(loopback_hub, private)
    signature = loopback_hub._repos[("model", "org/pipe")].commits[sha][SIGNATURE_FILE]
    changed = loopback_hub.commit("org/pipe", {**CODE, "helpers.py": b"import os\n", SIGNATURE_FILE: signature})
    with pytest.raises(SignatureError, match="no signature over this code"):
        resolve_pipeline("org/pipe", revision=changed, policy=requiring(key))


def test_malformed_signature_file(loopback_hub: LoopbackHub, signer: tuple[Path, str]) -> None:
    sha = loopback_hub.create_repo("org/pipe", {**CODE, SIGNATURE_FILE: b"{]"})
    with pytest.raises(SignatureError, match="not UTF-8 JSON"):
        resolve_pipeline("org/pipe", revision=sha, policy=requiring(signer[1]))


def test_strict_policy_accepts_pinned_signed_code(loopback_hub: LoopbackHub, signer: tuple[Path, str]) -> None:
    private, key = signer
    sha = signed_repo(loopback_hub, private)
    strict = with_overrides(load_policy("strict"), sources={"trusted_keys": (key,)})
    assert resolve_pipeline("org/pipe", revision=sha, policy=strict).pinned


def test_cli_keygen_and_sign_local_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = tmp_path / "pipe"
    code.mkdir()
    for rel, data in CODE.items():
        (code / rel).write_bytes(data)
    assert main(["keygen", "-o", str(tmp_path / "k")]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("ed25519:") and (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    assert main(["keygen", "-o", str(tmp_path / "k")]) == 2  # refuses to overwrite
    assert main(["sign", str(code), "--key", str(tmp_path / "k.pem")]) == 0
    assert (code / SIGNATURE_FILE).is_file()
    manifest = resolve_pipeline(code, policy=requiring(key))
    assert manifest.notes["signature_key"] == key
    (code / "helpers.py").write_bytes(b"import os\n")
    with pytest.raises(SignatureError):
        resolve_pipeline(code, policy=requiring(key))


def test_unknown_key_tolerated_when_signature_optional(
    loopback_hub: LoopbackHub, signer: tuple[Path, str], tmp_path: Path
) -> None:
    private, _key = signer
    _other_private, _pub, other_key = generate_keypair(tmp_path / "other")
    sha = signed_repo(loopback_hub, private)
    optional = with_overrides(load_policy("default"), sources={"trusted_keys": (other_key,)})
    manifest = resolve_pipeline("org/pipe", revision=sha, policy=optional)
    assert "signature_key" not in manifest.notes


def test_malformed_signature_is_reported_when_not_required(
    loopback_hub: LoopbackHub, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    sha = loopback_hub.create_repo("org/pipe", {**CODE, SIGNATURE_FILE: b"{]"})
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="safeloader"):
        assert main(["fetch", "org/pipe", "--revision", sha]) == 0
    out = capsys.readouterr().out
    assert f"note: signature_warning: {SIGNATURE_FILE} of org/pipe cannot vouch for this code" in out
    assert "not UTF-8 JSON" in out and "not UTF-8 JSON" in caplog.text
    assert main(["audit", "org/pipe", "--revision", sha, "--format", "json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)["reports"]
    assert any(note.startswith("signature warning: ") and "not UTF-8 JSON" in note for note in report["notes"])


def test_stale_signature_is_reported_when_not_required(loopback_hub: LoopbackHub, signer: tuple[Path, str]) -> None:
    sha = signed_repo(loopback_hub, signer[0])
    signature = loopback_hub._repos[("model", "org/pipe")].commits[sha][SIGNATURE_FILE]
    changed = loopback_hub.commit("org/pipe", {**CODE, "helpers.py": b"import os\n", SIGNATURE_FILE: signature})
    manifest = resolve_pipeline("org/pipe", revision=changed, policy=load_policy("default"))
    assert "no signature over this code" in manifest.notes["signature_warning"]


def test_forged_signature_is_refused_even_when_not_required(
    loopback_hub: LoopbackHub, signer: tuple[Path, str], tiny_model_dir: Path
) -> None:
    from safeloader import DiffusionPipeline

    sha = signed_repo(loopback_hub, signer[0])
    body = json.loads(loopback_hub._repos[("model", "org/pipe")].commits[sha][SIGNATURE_FILE])
    forged = bytearray(base64.b64decode(body["signatures"][0]["signature"]))
    forged[0] ^= 1
    body["signatures"][0]["signature"] = base64.b64encode(bytes(forged)).decode()
    bad = loopback_hub.commit("org/pipe", {**CODE, SIGNATURE_FILE: json.dumps(body).encode()})
    with pytest.raises(SignatureError, match="does not verify"):
        DiffusionPipeline.from_pretrained(
            str(tiny_model_dir), custom_pipeline="org/pipe", custom_revision=bad, trust_remote_code=True
        )


def test_signatures_of_other_entries_leave_this_one_unsigned(
    loopback_hub: LoopbackHub, signer: tuple[Path, str]
) -> None:
    """A community folder's signature file may sign only some of its pipelines: the others are unsigned, not stale."""
    sha = signed_repo(loopback_hub, signer[0])
    signature = loopback_hub._repos[("model", "org/pipe")].commits[sha][SIGNATURE_FILE]
    other = loopback_hub.commit(
        "org/pipe", {"pipeline.py": b"X = 1\n", SIGNATURE_FILE: signature.replace(b'"pipeline.py"', b'"other.py"', 1)}
    )
    manifest = resolve_pipeline("org/pipe", revision=other, policy=load_policy("default"))
    assert "signature_warning" not in manifest.notes and "signature_key" not in manifest.notes
