"""The content-addressed audit cache: reuse for the same bytes, never for changed ones; corrupt entries and
other policies are ignored; entries are private; ``--no-cache`` bypasses it."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from safeloader.audit import audit_path
from safeloader.audit.cache import AuditCache
from safeloader.cli import main
from safeloader.policy import load_policy, with_overrides
from safeloader.resolve.cache_mac import load_or_create_secret, seal

CLEAN = b"import torch\n\n\ndef run(x):\n    return torch.zeros(1) + x\n"
EVIL = b"import os\n\n\ndef run():\n    os.system('id')\n"
DEFAULT = load_policy("default")


def entries(root: Path) -> list[Path]:
    return sorted((root / "audit").rglob("*.json"))


def resealed(root: Path, document: dict[str, object]) -> str:
    """``document`` with the MAC this user's cache would write (what only the cache's owner can do)."""
    body = {k: v for k, v in document.items() if k != "mac"}
    return json.dumps(seal(load_or_create_secret(root), "audit-result", str(document["key"]), body))


def test_second_audit_reads_the_cache_and_gives_the_same_report(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_bytes(EVIL)
    cache_dir = tmp_path / "cache"
    first = audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir))
    [entry] = entries(cache_dir)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    # Prove the second run reads the entry: a result recorded there (for these exact bytes) is what it reports.
    cache = AuditCache(DEFAULT, cache_dir)
    second = audit_path(tmp_path, DEFAULT, cache)
    assert second == first and {f.rule_id for f in second.findings} == {"SL202"}
    document = json.loads(entry.read_text())
    document["hits"] = []
    entry.write_text(resealed(cache_dir, document))
    assert audit_path(tmp_path, DEFAULT, cache).findings == ()


def test_a_planted_or_edited_entry_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_bytes(EVIL)
    cache_dir = tmp_path / "cache"
    audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir))
    [entry] = entries(cache_dir)
    document = json.loads(entry.read_text())
    document["hits"] = []
    entry.write_text(json.dumps(document))  # edited, MAC left as it was
    assert {f.rule_id for f in audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir)).findings} == {"SL202"}
    del document["mac"]
    entry.write_text(json.dumps(document))  # planted without a MAC
    assert {f.rule_id for f in audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir)).findings} == {"SL202"}
    other_cache = tmp_path / "other"
    other_cache.mkdir(mode=0o700)
    entry.write_text(resealed(other_cache, document))  # sealed under another cache's secret
    assert {f.rule_id for f in audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir)).findings} == {"SL202"}


def test_a_cache_others_can_write_is_refused(tmp_path: Path) -> None:
    from safeloader.errors import CacheError

    (tmp_path / "pipeline.py").write_bytes(EVIL)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(CacheError, match="writable"):
        AuditCache(DEFAULT, shared)
    assert main(["audit", str(tmp_path), "--no-cache"]) == 1  # --no-cache never touches the cache


def test_changed_bytes_are_audited_afresh(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_bytes(CLEAN)
    cache = AuditCache(DEFAULT, tmp_path / "cache")
    assert audit_path(tmp_path, DEFAULT, cache).verdict == "allow"
    pipeline.write_bytes(EVIL)
    report = audit_path(tmp_path, DEFAULT, cache)
    assert report.verdict == "deny" and len(entries(tmp_path / "cache")) == 2


@pytest.mark.parametrize(
    "damage",
    [b"", b"{", b'{"format": 1}', b"[1, 2]", b'{"format": 1, "key": "x", "hits": 5}'],
    ids=["empty", "truncated", "missing-fields", "not-an-object", "wrong-key"],
)
def test_a_corrupt_entry_is_ignored_and_rewritten(tmp_path: Path, damage: bytes) -> None:
    (tmp_path / "pipeline.py").write_bytes(EVIL)
    cache_dir = tmp_path / "cache"
    audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir))
    [entry] = entries(cache_dir)
    entry.write_bytes(damage)
    report = audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir))
    assert {f.rule_id for f in report.findings} == {"SL202"}
    assert json.loads(entry.read_text())["format"] == 1


def test_malformed_hits_in_an_entry_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_bytes(EVIL)
    cache_dir = tmp_path / "cache"
    audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir))
    [entry] = entries(cache_dir)
    document = json.loads(entry.read_text())
    for bad in ([["SL999", "x", 1, 0]], [["SL202", 5, 1, 0]], [["SL202", "x", -1, 0]]):
        document["hits"] = bad
        entry.write_text(resealed(cache_dir, document))  # a well-sealed entry is still validated
        report = audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir))
        assert {f.rule_id for f in report.findings} == {"SL202"}, bad


def test_the_key_binds_policy_and_path(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_bytes(EVIL)
    cache_dir = tmp_path / "cache"
    audit_path(tmp_path, DEFAULT, AuditCache(DEFAULT, cache_dir))
    denying = with_overrides(DEFAULT, audit={"deny_imports": ("os",)})
    report = audit_path(tmp_path, denying, AuditCache(denying, cache_dir))
    assert "SL102" in {f.rule_id for f in report.findings}
    strict = load_policy("strict")
    audit_path(tmp_path, strict, AuditCache(strict, cache_dir))
    assert len(entries(cache_dir)) == 3
    assert AuditCache(DEFAULT, cache_dir).key("a.py", "0" * 64) != AuditCache(DEFAULT, cache_dir).key("b.py", "0" * 64)


def test_cli_uses_the_cache_and_no_cache_bypasses_it(tmp_path: Path, isolated_safeloader_cache: Path) -> None:
    (tmp_path / "pipeline.py").write_bytes(EVIL)
    assert main(["audit", str(tmp_path), "--no-cache"]) == 1
    assert entries(isolated_safeloader_cache) == []
    assert main(["audit", str(tmp_path)]) == 1
    [entry] = entries(isolated_safeloader_cache)
    document = json.loads(entry.read_text())
    document["hits"] = []
    entry.write_text(json.dumps(document))
    assert main(["audit", str(tmp_path)]) == 1  # a planted "allow" is ignored: its MAC no longer matches
    entry.write_text(resealed(isolated_safeloader_cache, document))
    assert main(["audit", str(tmp_path)]) == 0  # the cache is read: only its owner could have sealed that
    assert main(["audit", str(tmp_path), "--no-cache"]) == 1


def test_an_entry_that_cannot_be_written_only_costs_speed(tmp_path: Path) -> None:
    cache = AuditCache(DEFAULT, tmp_path / "cache")
    (tmp_path / "pipeline.py").write_bytes(EVIL)
    key = cache.key("pipeline.py", hashlib.sha256(EVIL).hexdigest())
    (cache.directory / key[:2]).write_bytes(b"")  # a file where the entry's folder belongs
    assert audit_path(tmp_path, DEFAULT, cache).verdict == "deny"
    assert entries(tmp_path / "cache") == []


def test_a_cache_root_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    from safeloader.errors import CacheError

    blocked = tmp_path / "file-not-dir"
    blocked.write_bytes(b"")
    with pytest.raises(CacheError, match="not a plain directory"):
        AuditCache(DEFAULT, blocked)
