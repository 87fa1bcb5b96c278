"""An attacker who controls one community pipeline: ``[sources]`` applies to every file that will run.

Community pipelines are separate files in one mirror folder, each its own source ``community:<name>``; an
allowed pipeline importing a denied sibling (``from .evil_pipe import PAYLOAD``) must be refused, before
the sibling is even downloaded and again when the entry comes from the cache. Hub repo ids are matched
case-insensitively, as the Hub resolves them, so a deny cannot be bypassed by spelling.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from safeloader import DiffusionPipeline
from safeloader.cli import main
from safeloader.errors import SourceDenied
from safeloader.policy import load_policy, source_allowed, with_overrides
from safeloader.resolve import resolve_pipeline
from tests.fixtures.hub_plugin import seed_community
from tests.fixtures.hub_server import LoopbackHub

NICE = b"from .evil_pipe import PAYLOAD\n\nclass NicePipe:\n    pass\n"


def evil(marker: Path) -> bytes:
    return f"PAYLOAD = open({str(marker)!r}, 'w').write('evil sibling ran')\n".encode()


def write_policy(tmp_path: Path, sources: str) -> Path:
    path = tmp_path / "org.toml"
    path.write_text(f'[policy]\nname = "org"\nextends = "default"\n\n[sources]\n{sources}\n')
    return path


def test_denied_community_sibling_is_refused_before_download(
    loopback_hub: LoopbackHub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    seed_community(loopback_hub, {"nice_pipe.py": NICE, "evil_pipe.py": evil(marker)})
    policy = with_overrides(load_policy("default"), sources={"deny": ("community:evil_pipe",)})
    with pytest.raises(SourceDenied) as caught:
        DiffusionPipeline.from_pretrained(
            str(tiny_model_dir), custom_pipeline="nice_pipe", trust_remote_code=True, policy=policy
        )
    message = str(caught.value)
    assert "'community:evil_pipe'" in message and "community:nice_pipe imports (evil_pipe.py)" in message
    assert loopback_hub.count("GET", "evil_pipe.py") == loopback_hub.count("HEAD", "evil_pipe.py") == 0
    assert not marker.exists()
    # Loading the denied pipeline by its own name is refused as before.
    with pytest.raises(SourceDenied, match="community:evil_pipe"):
        resolve_pipeline("evil_pipe", policy=policy)


def test_denied_sibling_is_refused_from_the_cache_and_by_audit(
    loopback_hub: LoopbackHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_community(loopback_hub, {"nice_pipe.py": NICE, "evil_pipe.py": evil(tmp_path / "ran")})
    cached = resolve_pipeline("nice_pipe", policy=load_policy("default"))  # allowed then: cached with its sibling
    assert set(cached.files) == {"nice_pipe.py", "evil_pipe.py"}
    downloads = loopback_hub.count("GET", "/resolve/")
    policy = write_policy(tmp_path, 'allow = ["community:*"]\ndeny = ["community:evil_*"]')
    capsys.readouterr()
    assert main(["audit", "nice_pipe", "--policy", str(policy)]) == 2
    assert "does not allow source 'community:evil_pipe', which community:nice_pipe imports" in capsys.readouterr().err
    assert main(["fetch", "nice_pipe", "--policy", str(policy)]) == 2
    assert loopback_hub.count("GET", "/resolve/") == downloads


def test_local_file_siblings_have_their_own_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "nice.py").write_bytes(b"from .vendored import X\n")
    (code / "vendored.py").write_bytes(b"X = 1\n")
    policy = write_policy(tmp_path, f'deny = ["local:{code}/vendored.py"]')
    assert main(["fetch", str(code / "vendored.py"), "--policy", str(policy)]) == 2
    assert main(["fetch", str(code / "nice.py"), "--policy", str(policy)]) == 2
    assert f"'local:{code}/vendored.py', which local:{code}/nice.py imports" in capsys.readouterr().err
    # A local directory is one source: its files share the directory's identity.
    (code / "pipeline.py").write_bytes(b"from .vendored import X\n")
    assert main(["fetch", str(code), "--policy", str(policy)]) == 0


def test_hub_ids_match_case_insensitively(
    loopback_hub: LoopbackHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loopback_hub.create_repo("acme/experimental-x", {"pipeline.py": b"import os\n"})
    loopback_hub.create_repo("acme/pipe", {"pipeline.py": b"X = 1\n"})
    policy = write_policy(tmp_path, 'allow = ["acme/*"]\ndeny = ["acme/experimental-*"]')
    capsys.readouterr()
    for spelling in ("acme/experimental-x", "ACME/Experimental-x", "Acme/EXPERIMENTAL-X"):
        assert main(["fetch", spelling, "--policy", str(policy)]) == 2
        assert f"does not allow source '{spelling}'" in capsys.readouterr().err
    assert loopback_hub.count("GET", "/resolve/") == 0
    assert main(["fetch", "ACME/Pipe", "--policy", str(policy)]) == 0  # allow matches any spelling too


@pytest.mark.parametrize(
    ("source_id", "allowed"),
    [
        ("ACME/Experimental-x", False),
        ("acme/EXPERIMENTAL-1", False),
        ("Acme/pipe", True),
        ("other/pipe", False),
        ("community:evil_pipe", False),
        ("community:Evil_Pipe", True),  # another file of the mirror: community names are case-sensitive
        ("community:nice", True),
        ("local:/srv/code", True),
        ("local:/SRV/code", False),  # paths are case-sensitive on Linux
    ],
)
def test_source_matching_rules(source_id: str, allowed: bool) -> None:
    policy = with_overrides(
        load_policy("default"),
        sources={
            "allow": ("acme/*", "community:*", "local:/srv/*"),
            "deny": ("acme/experimental-*", "community:evil_pipe"),
        },
    )
    assert source_allowed(policy, source_id) is allowed
