"""`safeloader audit`: exit codes, output formats, -o, --fail-on, and a Hub spec through the resolver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safeloader.audit.formats.sarif import SECURITY_SEVERITY
from safeloader.audit.rules import RULES
from safeloader.cli import main
from tests.fixtures.hub_server import LoopbackHub

CLEAN = b"import torch\nfrom diffusers import DiffusionPipeline\n\n\nclass P(DiffusionPipeline):\n    pass\n"
EVIL = b"import os\n\n\ndef run():\n    os.system('id')\n"
MEDIUM = b"import pickle\n"


@pytest.fixture
def pipelines(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, data in {"clean": CLEAN, "evil": EVIL, "medium": MEDIUM}.items():
        directory = tmp_path / name
        directory.mkdir()
        (directory / "pipeline.py").write_bytes(data)
        paths[name] = directory
    return paths


def test_exit_codes(pipelines: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(pipelines["clean"])]) == 0
    assert main(["audit", str(pipelines["evil"])]) == 1
    assert main(["audit", str(pipelines["medium"])]) == 0
    assert main(["audit", str(pipelines["medium"]), "--fail-on", "medium"]) == 1
    assert main(["audit", str(pipelines["clean"]), str(pipelines["evil"])]) == 1
    (tmp_path / "broken.py").write_bytes(b"def (:\n")
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "broken.py")]) == 2
    err = capsys.readouterr().err
    assert "broken.py line 1 is not valid Python" in err
    assert main(["audit", str(pipelines["clean"]), "--policy", str(tmp_path / "nope.toml")]) == 2


def test_text_output_groups_findings_with_the_offending_line(
    pipelines: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["audit", str(pipelines["evil"])])
    out = capsys.readouterr().out
    assert "DENY under policy 'default'" in out
    assert f"{pipelines['evil']}/pipeline.py" in out
    assert "5:5 CRIT SL202" in out and "| os.system('id')" in out


def test_json_on_stdout_logs_on_stderr(pipelines: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--format", "json", str(pipelines["evil"]), str(pipelines["clean"])]) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["schema_version"] == 1 and document["verdict"] == "deny"
    finding = document["findings"][0]
    assert {"rule_id", "severity", "cwe", "file", "line", "message"} <= set(finding)
    assert finding["rule_id"] == "SL202" and finding["cwe"] == "CWE-78" and finding["line"] == 5
    assert [r["verdict"] for r in document["reports"]] == ["deny", "allow"]
    assert "safeloader" not in captured.out.split("{", 1)[0]


def test_sarif_is_code_scanning_shaped(pipelines: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.sarif"
    assert main(["audit", "--format", "sarif", "-o", str(out), str(pipelines["evil"])]) == 1
    sarif = json.loads(out.read_text())
    assert sarif["version"] == "2.1.0" and sarif["$schema"].endswith("sarif-2.1.0.json")
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    assert all(float(r["properties"]["security-severity"]) > 0 for r in rules)
    result = run["results"][0]
    assert rules[result["ruleIndex"]]["id"] == result["ruleId"] == "SL202"
    assert result["properties"]["security-severity"] == SECURITY_SEVERITY["critical"]
    assert result["partialFingerprints"]["primaryLocationLineHash"].endswith(":1")
    location = result["locations"][0]["physicalLocation"]
    assert location["region"] == {"startLine": 5, "startColumn": 5}
    assert location["artifactLocation"]["uri"] == (pipelines["evil"] / "pipeline.py").as_uri()
    assert not list(tmp_path.glob(".report.sarif.*")), "temporary file left behind"


def test_sarif_uris_are_relative_to_the_checkout(
    pipelines: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.sarif"
    main(["audit", "--format", "sarif", "-o", str(out), str(pipelines["evil"])])
    result = json.loads(out.read_text())["runs"][0]["results"][0]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "evil/pipeline.py"


def test_fingerprint_is_stable_when_lines_shift(tmp_path: Path) -> None:
    prints = []
    for prefix in (b"", b"\n\n# moved\n"):
        (tmp_path / "pipeline.py").write_bytes(prefix + EVIL)
        out = tmp_path / "r.sarif"
        main(["audit", "--format", "sarif", "-o", str(out), str(tmp_path / "pipeline.py")])
        prints.append(json.loads(out.read_text())["runs"][0]["results"][0]["partialFingerprints"])
    assert prints[0] == prints[1]


def test_policy_by_path_and_name(pipelines: dict[str, Path], tmp_path: Path) -> None:
    policy = tmp_path / "org.toml"
    policy.write_text('[policy]\nname = "org"\nextends = "default"\n[audit.rules]\nSL202 = "off"\n')
    assert main(["audit", str(pipelines["evil"]), "--policy", str(policy)]) == 0
    assert main(["audit", str(pipelines["evil"]), "--policy", "permissive"]) == 1


def test_hub_spec_goes_through_the_resolver(loopback_hub: LoopbackHub, capsys: pytest.CaptureFixture[str]) -> None:
    resolve = pytest.importorskip("safeloader.resolve")
    if not hasattr(resolve, "resolve_pipeline"):
        pytest.skip("the resolver has not landed yet")
    commit = loopback_hub.create_repo("acme/evil-pipeline", {"pipeline.py": EVIL, "README.md": b"# x\n"})
    assert main(["audit", "--format", "json", "acme/evil-pipeline", "--revision", commit]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["reports"][0]["label"] == f"acme/evil-pipeline@{commit}"
    assert document["findings"][0]["rule_id"] == "SL202"


def test_parallel_directory_audit_matches_the_serial_one(tmp_path: Path) -> None:
    """A directory of 40 entries audited on 2 forked processes (in a fresh, single-threaded CLI process) gives
    the same JSON report as one process; an unparsable file still ends the audit with exit 2."""
    import os
    import subprocess
    import sys

    corpus = tmp_path / "many"
    corpus.mkdir()
    for index in range(40):
        body = EVIL if index % 7 == 0 else CLEAN
        (corpus / f"p{index:02}.py").write_bytes(body + f"\nX{index} = {index}\n".encode())
    env = dict(os.environ, SAFELOADER_CACHE=str(tmp_path / "cache"))

    def run(*extra: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "safeloader.cli", "audit", str(corpus), "--format", "json", *extra]
        return subprocess.run(command, env=env, capture_output=True, check=False)

    serial, parallel = run("--jobs", "1", "--no-cache"), run("--jobs", "2", "--no-cache")
    assert serial.returncode == parallel.returncode == 1
    assert json.loads(serial.stdout) == json.loads(parallel.stdout)
    found = {Path(f["file"]).name for f in json.loads(parallel.stdout)["findings"]}
    assert found == {f"p{i:02}.py" for i in range(0, 40, 7)}
    (corpus / "p39.py").write_bytes(b"def (:\n")
    broken = run("--jobs", "2")
    assert broken.returncode == 2 and b"p39.py line 1 is not valid Python" in broken.stderr


def test_audit_command_imports_no_heavy_module(tmp_path: Path) -> None:
    """Start-up is part of every audit: `safeloader audit` must not import torch, diffusers, the Hub client
    or the verifier's crypto (python -X importtime lists every module the process imported)."""
    import os
    import subprocess
    import sys

    (tmp_path / "pipeline.py").write_bytes(CLEAN)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "safeloader.cli", "audit", str(tmp_path), "--no-cache"],
        env=dict(os.environ, SAFELOADER_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "safeloader.audit.api" in imported
    heavy = {"torch", "diffusers", "transformers", "huggingface_hub", "httpx", "numpy", "cryptography", "safetensors"}
    assert not heavy & {name.split(".", 1)[0] for name in imported}
