"""An attacker who can write the safeloader cache: refused directories, private files, authenticated records.

Blobs are re-hashed on every read, so the attack is on the records naming them: store a new blob (its name
matching its hash) and rewrite the manifest to point at it. The cache refuses directories another user owns
or can write (as ssh refuses a writable ``~/.ssh``), and every manifest, ref and listing carries an HMAC
under a per-user secret bound to its key, so a planted or swapped record is an ``IntegrityError``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest

from safeloader import DiffusionPipeline
from safeloader.cli import main
from safeloader.errors import CacheError, IntegrityError
from safeloader.policy import load_policy
from safeloader.resolve import resolve_pipeline, secure_cache_root
from safeloader.resolve.cache import Cache, entry_key
from safeloader.resolve.manifest import sha256_hex
from tests.fixtures.hub_server import LoopbackHub

CODE = {"pipeline.py": b"from .helpers import h\n\nclass P:\n    pass\n", "helpers.py": b"def h():\n    return 1\n"}
OTHER_UID = 4242


def _fetch(sha: str) -> int:
    return main(["fetch", "acme/pipe", "--revision", sha])


@pytest.mark.parametrize(
    "weakness",
    ["root world-writable", "root owned by another user", "subdirectory group-writable", "parent writable, not sticky"],
)
def test_a_cache_others_can_write_is_refused(
    loopback_hub: LoopbackHub,
    isolated_safeloader_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    weakness: str,
) -> None:
    sha = loopback_hub.create_repo("acme/pipe", CODE)
    cache = isolated_safeloader_cache
    if weakness == "root world-writable":
        cache.chmod(0o777)
        culprit = cache
    elif weakness == "root owned by another user":
        os.chown(cache, OTHER_UID, OTHER_UID)
        culprit = cache
    elif weakness == "subdirectory group-writable":
        assert _fetch(sha) == 0
        culprit = cache / "manifests" / "hub"
        culprit.chmod(0o770)
    else:
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        cache = shared / "cache"
        monkeypatch.setenv("SAFELOADER_CACHE", str(cache))
        culprit = shared
    downloads = loopback_hub.count("GET", "/resolve/")
    capsys.readouterr()
    assert _fetch(sha) == 2
    err = capsys.readouterr().err
    assert f"refusing the safeloader cache: {culprit} " in err and "another user could plant code" in err
    assert "$SAFELOADER_CACHE" in err
    assert loopback_hub.count("GET", "/resolve/") == downloads  # refused before anything was fetched
    if weakness != "subdirectory group-writable":  # the root check other cache users (audit results) rely on
        with pytest.raises(CacheError, match="refusing the safeloader cache"):
            secure_cache_root()


def test_everything_is_created_private(
    loopback_hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "new" / "cache"
    monkeypatch.setenv("SAFELOADER_CACHE", str(cache))
    previous = os.umask(0o000)  # even a permissive umask must not make the cache readable by others
    try:
        sha = loopback_hub.create_repo("acme/pipe", CODE)
        resolve_pipeline("acme/pipe", revision=sha, policy=load_policy("default"))
    finally:
        os.umask(previous)
    entries = [cache, *cache.rglob("*")]
    dirs = [p for p in entries if p.is_dir()]
    files = [p for p in entries if p.is_file()]
    assert {"blobs", "manifests", "listings", "locks"} <= {p.name for p in dirs}
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in dirs), [oct(p.stat().st_mode) for p in dirs]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), [(p, oct(p.stat().st_mode)) for p in files]
    secret = cache / "cache.key"
    assert secret.stat().st_size == 32 and all(p.stat().st_uid == os.geteuid() for p in entries)


def _plant(cache: Path, manifest_path: Path, evil: bytes, *, mac: str | bool | None) -> None:
    """What an attacker with write access does: a valid blob for ``evil`` and a manifest naming it."""
    digest = sha256_hex(evil)
    blob = cache / "blobs" / digest[:2] / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(evil)
    body = json.loads(manifest_path.read_text())
    body["files"]["pipeline.py"] = digest
    if mac is None:
        body.pop("mac")
    elif isinstance(mac, str):
        body["mac"] = mac
    manifest_path.write_text(json.dumps(body))


@pytest.mark.parametrize("mac", ["none", "stale", "from another entry", "under another secret"])
def test_planted_manifest_is_refused(
    loopback_hub: LoopbackHub, isolated_safeloader_cache: Path, tiny_model_dir: Path, tmp_path: Path, mac: str
) -> None:
    sha = loopback_hub.create_repo("acme/pipe", CODE)
    other = loopback_hub.commit("acme/pipe", {**CODE, "helpers.py": b"def h():\n    return 2\n"})
    assert _fetch(sha) == 0 and _fetch(other) == 0
    manifests = {
        json.loads(p.read_text())["commit"]: p for p in (isolated_safeloader_cache / "manifests").rglob("*.json")
    }
    target = manifests[sha]
    marker = tmp_path / "ran"
    evil = CODE["pipeline.py"] + f"open({str(marker)!r}, 'w').write('planted')\n".encode()
    if mac == "none":
        _plant(isolated_safeloader_cache, target, evil, mac=None)
    elif mac == "stale":
        _plant(isolated_safeloader_cache, target, evil, mac=True)
    elif mac == "from another entry":
        _plant(isolated_safeloader_cache, target, evil, mac=json.loads(manifests[other].read_text())["mac"])
    else:
        body = json.loads(target.read_text())
        body["files"]["pipeline.py"] = sha256_hex(evil)
        unsigned = json.dumps({k: v for k, v in body.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))
        forged = "hmac-sha256:" + hmac.new(b"x" * 32, unsigned.encode(), hashlib.sha256).hexdigest()
        _plant(isolated_safeloader_cache, target, evil, mac=forged)
    downloads = loopback_hub.count("GET", "/resolve/")
    with pytest.raises(IntegrityError, match=r"MAC is missing or wrong.*delete it and fetch again") as caught:
        DiffusionPipeline.from_pretrained(
            str(tiny_model_dir), custom_pipeline="acme/pipe", custom_revision=sha, trust_remote_code=True
        )
    assert str(target) in str(caught.value) and not marker.exists()
    assert loopback_hub.count("GET", "/resolve/") == downloads
    # Following the message: the entry is fetched again and the real bytes come back.
    target.unlink()
    manifest = resolve_pipeline("acme/pipe", revision=sha, policy=load_policy("default"))
    assert manifest.read_verified("pipeline.py") == CODE["pipeline.py"]


def test_planted_branch_record_is_refused_offline(
    loopback_hub: LoopbackHub, isolated_safeloader_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = loopback_hub.create_repo("acme/pipe", CODE)
    second = loopback_hub.commit("acme/pipe", {**CODE, "helpers.py": b"import os\n"})
    loopback_hub.set_ref("acme/pipe", "main", first)
    resolve_pipeline("acme/pipe", policy=load_policy("default"))  # records main -> first
    loopback_hub.set_ref("acme/pipe", "main", second)
    resolve_pipeline("acme/pipe", revision=second, policy=load_policy("default"))
    (ref,) = (isolated_safeloader_cache / "refs").glob("*.json")
    body = json.loads(ref.read_text())
    ref.write_text(json.dumps({**body, "commit": second}))  # point the offline branch at other code
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IntegrityError, match=r"branch record .* MAC is missing or wrong"):
        resolve_pipeline("acme/pipe", policy=load_policy("default"))


def test_the_secret_must_be_private(loopback_hub: LoopbackHub, isolated_safeloader_cache: Path) -> None:
    sha = loopback_hub.create_repo("acme/pipe", CODE)
    assert _fetch(sha) == 0
    secret = isolated_safeloader_cache / "cache.key"
    secret.chmod(0o644)
    with pytest.raises(CacheError, match=r"cache\.key is readable or writable by others"):
        resolve_pipeline("acme/pipe", revision=sha, policy=load_policy("default"))
    secret.chmod(0o600)
    os.chown(secret, OTHER_UID, OTHER_UID)
    with pytest.raises(CacheError, match=f"owned by uid {OTHER_UID}"):
        resolve_pipeline("acme/pipe", revision=sha, policy=load_policy("default"))


def test_entries_of_an_older_unauthenticated_cache_are_fetched_again(
    loopback_hub: LoopbackHub, isolated_safeloader_cache: Path, tmp_path: Path
) -> None:
    """Migration: manifests written before endpoints and MACs (keyed without the endpoint) are never read."""
    sha = loopback_hub.create_repo("acme/pipe", CODE)
    cache = Cache()
    evil = b"import os\nos.system('id')\n"
    legacy = {
        "manifest_version": 1,
        "source": "hub",
        "source_id": "acme/pipe",
        "repo": "acme/pipe",
        "repo_type": "model",
        "requested_revision": sha,
        "commit": sha,
        "entry": "pipeline.py",
        "files": {"pipeline.py": cache.store_blob(evil)},
        "fetched_at": "2026-11-01T00:00:00+00:00",
        "notes": {},
        "subfolder": "",
        "signature_sha256": None,
    }
    old_key = entry_key("hub", "model", "acme/pipe", "", sha, "pipeline.py")
    cache.manifest_path("hub", old_key).parent.mkdir(parents=True, mode=0o700)
    cache.manifest_path("hub", old_key).write_text(json.dumps(legacy))
    manifest = resolve_pipeline("acme/pipe", revision=sha, policy=load_policy("default"))
    assert manifest.read_verified("pipeline.py") == CODE["pipeline.py"]
    assert loopback_hub.count("GET", "/resolve/") == len(CODE)
