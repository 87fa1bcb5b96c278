"""An attacker who controls a Hub mirror: other bytes under a real commit id never reach another endpoint.

Two loopback Hubs on two ports: ``loopback_hub`` plays the real Hub, ``lying_mirror`` a mirror (reached with
``HF_ENDPOINT``, as users do) that serves forged files under the real commit id with a self-consistent
listing. Cache entries are keyed by the endpoint, and every endpoint's listing of a commit is recorded, so
the lie is caught the moment the other endpoint answers for that commit — in either order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from safeloader import DiffusionPipeline
from safeloader.cli import main
from safeloader.errors import IntegrityError
from safeloader.resolve.hub import normalized_endpoint
from safeloader.resolve.manifest import sha256_hex
from tests.fixtures.hub_server import LoopbackHub

GOOD = {"pipeline.py": b"from .helpers import h\n\nclass P:\n    pass\n", "helpers.py": b"def h():\n    return 1\n"}


def evil_files(marker: Path) -> dict[str, bytes]:
    payload = f"open({str(marker)!r}, 'w').write('mirror code ran')\n".encode()
    return {"pipeline.py": b"from .helpers import h\n" + payload, "helpers.py": GOOD["helpers.py"]}


def fetch_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    capsys.readouterr()
    assert main(["fetch", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_mirror_filled_cache_is_never_served_for_the_real_hub(
    loopback_hub: LoopbackHub,
    lying_mirror: LoopbackHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    sha = loopback_hub.create_repo("acme/pipe", GOOD)
    assert lying_mirror.create_repo("acme/pipe", evil_files(marker), forged_sha=sha) == sha

    # 1. Through the mirror: the lie is self-consistent, nothing can tell yet; the entry is the mirror's.
    monkeypatch.setenv("HF_ENDPOINT", lying_mirror.endpoint)
    via_mirror = fetch_json(capsys, "acme/pipe", "--revision", sha)
    assert via_mirror["commit"] == sha and via_mirror["notes"] == {}
    assert via_mirror["files"]["pipeline.py"] == sha256_hex(evil_files(marker)["pipeline.py"])

    # 2. The pinned load from the real Hub does not reuse it: it asks the Hub, which contradicts the mirror.
    monkeypatch.setenv("HF_ENDPOINT", loopback_hub.endpoint)
    with pytest.raises(IntegrityError) as caught:
        DiffusionPipeline.from_pretrained(
            str(tiny_model_dir), custom_pipeline="acme/pipe", custom_revision=sha, trust_remote_code=True
        )
    message = str(caught.value)
    assert (
        normalized_endpoint(loopback_hub.endpoint) in message and normalized_endpoint(lying_mirror.endpoint) in message
    )
    assert "pipeline.py" in message and "forged" in message
    assert loopback_hub.count("GET", "/tree/") == 1 and loopback_hub.count("GET", "/resolve/") == 0
    assert not marker.exists()

    # 3. Doing what the message says (drop the record once the mirror is known to lie) gives the real bytes.
    record = Path(re.search(r"delete (\S+\.json)", message).group(1))
    record.unlink()
    via_hub = fetch_json(capsys, "acme/pipe", "--revision", sha)
    assert via_hub["files"] == {name: sha256_hex(data) for name, data in GOOD.items()}
    assert via_hub["notes"] == {} and loopback_hub.count("GET", "/resolve/") == len(GOOD)


def test_real_hub_first_then_the_lying_mirror_is_refused(
    loopback_hub: LoopbackHub,
    lying_mirror: LoopbackHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    sha = loopback_hub.create_repo("acme/pipe", GOOD)
    lying_mirror.create_repo("acme/pipe", evil_files(tmp_path / "ran"), forged_sha=sha)
    fetch_json(capsys, "acme/pipe", "--revision", sha)
    monkeypatch.setenv("HF_ENDPOINT", lying_mirror.endpoint)
    assert main(["fetch", "acme/pipe", "--revision", sha]) == 2
    err = capsys.readouterr().err
    assert "IntegrityError" not in err and "list different contents for acme/pipe@" + sha in err
    assert lying_mirror.count("GET", "/resolve/") == 0  # refused on the listing, before any file was downloaded


def test_honest_mirror_gets_its_own_entry_and_spellings_of_one_endpoint_share_one(
    loopback_hub: LoopbackHub,
    lying_mirror: LoopbackHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sha = loopback_hub.create_repo("acme/pipe", GOOD)
    assert lying_mirror.create_repo("acme/pipe", GOOD) == sha  # an honest mirror: same tree, same commit id
    first = fetch_json(capsys, "acme/pipe", "--revision", sha)
    assert first["endpoint"] == normalized_endpoint(loopback_hub.endpoint)
    # The same endpoint spelled differently is the same cache entry: no second download.
    monkeypatch.setenv("HF_ENDPOINT", loopback_hub.endpoint + "/")
    assert fetch_json(capsys, "acme/pipe", "--revision", sha)["endpoint"] == first["endpoint"]
    assert loopback_hub.count("GET", "/resolve/") == len(GOOD)
    # Another endpoint is asked itself, and agreeing with the first is fine.
    monkeypatch.setenv("HF_ENDPOINT", lying_mirror.endpoint)
    second = fetch_json(capsys, "acme/pipe", "--revision", sha)
    assert second["endpoint"] == normalized_endpoint(lying_mirror.endpoint) != first["endpoint"]
    assert second["files"] == first["files"] and lying_mirror.count("GET", "/resolve/") == len(GOOD)


def test_model_weights_from_a_lying_mirror_are_refused_by_the_real_hub(
    loopback_hub: LoopbackHub,
    lying_mirror: LoopbackHub,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    from safeloader.model_source import resolve_model
    from safeloader.policy import load_policy

    files = {p.relative_to(tiny_model_dir).as_posix(): p.read_bytes() for p in tiny_model_dir.rglob("*") if p.is_file()}
    weights = next(name for name in files if name.endswith(".safetensors"))
    forged = dict(files)
    forged[weights] = files[weights][:-8] + b"\x00" * 8  # same size, other numbers
    sha = loopback_hub.create_repo("tiny/ddpm", files)
    lying_mirror.create_repo("tiny/ddpm", forged, forged_sha=sha)
    monkeypatch.setenv("HF_ENDPOINT", lying_mirror.endpoint)
    # A private Hub cache: forged weights under a real commit id must not reach other tests' shared cache.
    hf_cache = tmp_path / "hf-cache"
    from_mirror = resolve_model("tiny/ddpm", revision=sha, policy=load_policy("default"), cache_dir=hf_cache)
    assert (from_mirror.directory / weights).read_bytes() == forged[weights]
    monkeypatch.setenv("HF_ENDPOINT", loopback_hub.endpoint)
    with pytest.raises(IntegrityError, match=rf"list different contents for tiny/ddpm@{sha} \({re.escape(weights)}\)"):
        DiffusionPipeline.from_pretrained("tiny/ddpm", revision=sha, cache_dir=str(hf_cache))
    assert loopback_hub.count("GET", "/resolve/") == 0


def test_model_file_left_in_the_hub_cache_by_a_mirror_is_downloaded_again(
    loopback_hub: LoopbackHub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The Hub cache is keyed by repo and commit only: a file there the endpoint contradicts is fetched anew."""
    from safeloader.model_source import resolve_model
    from safeloader.policy import load_policy

    files = {p.relative_to(tiny_model_dir).as_posix(): p.read_bytes() for p in tiny_model_dir.rglob("*") if p.is_file()}
    weights = next(name for name in files if name.endswith(".safetensors"))
    sha = loopback_hub.create_repo("tiny/ddpm", files)
    hf_cache = tmp_path / "hf-cache"
    first = resolve_model("tiny/ddpm", revision=sha, policy=load_policy("default"), cache_dir=hf_cache)
    cached = (first.directory / weights).resolve()
    cached.write_bytes(files[weights][:-8] + b"\x00" * 8)  # what a mirror's answer would have left there
    downloads = loopback_hub.count("GET", weights)
    again = resolve_model("tiny/ddpm", revision=sha, policy=load_policy("default"), cache_dir=hf_cache)
    assert (again.directory / weights).read_bytes() == files[weights]
    assert loopback_hub.count("GET", weights) == downloads + 1


@pytest.mark.parametrize(
    ("spelling", "normal"),
    [
        ("https://huggingface.co", "https://huggingface.co"),
        ("HTTPS://HuggingFace.co:443/", "https://huggingface.co"),
        ("https://user:secret@mirror.example/hf//", "https://mirror.example/hf"),
        ("http://127.0.0.1:80", "http://127.0.0.1"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("https://mirror.example:8443", "https://mirror.example:8443"),
    ],
)
def test_endpoint_normalization(spelling: str, normal: str) -> None:
    assert normalized_endpoint(spelling) == normal
