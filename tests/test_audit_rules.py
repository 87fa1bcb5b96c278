"""Rule behaviour: what is flagged, what is not (docstrings, comments, look-alikes), and policy effects."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from safeloader.audit import RULES, AuditReport, audit_sources
from safeloader.audit.model import decide_verdict
from safeloader.audit.rules import FAMILIES
from safeloader.errors import AuditError, IntegrityError
from safeloader.policy import load_policy, with_overrides
from safeloader.policy.schema import SEVERITIES, Policy

DEFAULT = load_policy("default")


def audit(source: str, policy: Policy = DEFAULT, **files: str) -> tuple[set[str], AuditReport]:
    sources = {"pipeline.py": textwrap.dedent(source).encode()}
    sources.update({name.replace("__", "/") + ".py": textwrap.dedent(text).encode() for name, text in files.items()})
    report = audit_sources(sources, policy, entry="pipeline.py", label="test")
    return {f.rule_id for f in report.findings}, report


def test_registry_ids_are_unique_in_family_ranges_with_cwe_and_message() -> None:
    ranges = {
        "imports": "SL1",
        "process": "SL2",
        "network": "SL3",
        "dynamic": "SL4",
        "deserialization": "SL5",
        "native": "SL6",
        "introspection": "SL7",
        "credentials": "SL8",
        "tampering": "SL9",
        "obfuscation": "SL9",
    }
    seen: set[str] = set()
    for family in FAMILIES:
        for rule in family.rules:
            assert rule.id not in seen
            seen.add(rule.id)
            assert rule.id.startswith(ranges[family.name]) and len(rule.id) == 5
            assert rule.severity in SEVERITIES and rule.cwe > 0 and "{detail}" in rule.message
        for table in (family.modules, family.references, family.reference_prefixes, family.attributes):
            assert set(table.values()) <= set(RULES)
    assert seen == set(RULES) and len(RULES) >= 40
    assert all(RULES[r].id >= "SL951" for r in ("SL951", "SL955"))


def test_docstrings_comments_and_lookalikes_are_not_code() -> None:
    found, report = audit(
        '''
        """Never call os.system("rm -rf /") or eval(input()); ~/.ssh/id_rsa is documentation."""
        # exec(base64.b64decode(payload)) in a comment is not code
        import re
        import urllib.parse as ul

        class Pipe:
            def __call__(self, prompt):
                """Reads HF_TOKEN? No: this docstring only mentions it."""
                pattern = re.compile(r"\\d+")
                self.model.eval()
                return ul.quote(prompt), pattern
        '''
    )
    assert found == set(), report


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("import os as o\no.system('x')", "SL202"),
        ("from subprocess import run\nrun(['x'])", "SL202"),
        ("import os\nf = os.execvp", "SL202"),
        ("m = __import__('o' + 's')\nm.popen('x')", "SL202"),
        ("import importlib\nimportlib.import_module(name)", "SL103"),
        ("compile('1', 'f', 'eval')", "SL402"),
        ("import torch\ntorch.load(p, weights_only=flag)", "SL502"),
        ("import yaml\nyaml.load(s)", "SL504"),
        ("import os\nos.environ['GITHUB_TOKEN']", "SL802"),
        ("import os\nname = 'HF_' + 'TOKEN'\nos.getenv(name)", "SL802"),
        ("import os\nenv = os.environ.copy()", "SL804"),
        ("p = '/proc/self/mem'", "SL803"),
        ("x = obj.gi_frame", "SL702"),
        ("import inspect\ninspect.currentframe()", "SL703"),
        ("import sys\nsys.modules['torch'] = None", "SL904"),
        ("import torch\ntorch.load = print", "SL904"),
        ("import signal\nsignal.signal(1, None)", "SL922"),
        ("import torch\ntorch.ops.load_library('x.so')", "SL602"),
        ("import huggingface_hub\nhuggingface_hub.snapshot_download('a/b')", "SL303"),
        ("x = 'A' * 3 + " + repr("".join(chr(33 + (i * 7919) % 90) for i in range(400))), "SL953"),
        ("x = ''.join(chr(c) for c in [101, 118, 97, 108, 40])", "SL952"),
        ("from pathlib import Path\nPath(__file__).write_text('x')", "SL903"),
    ],
)
def test_rule_fires(source: str, rule: str) -> None:
    found, report = audit(source)
    assert rule in found, report


def test_safe_torch_and_numpy_loads_pass() -> None:
    found, _ = audit(
        "import torch, numpy as np, yaml\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
        "yaml.load(s, Loader=yaml.SafeLoader)\nopen(__file__).read()\n"
    )
    assert found == set()


def test_policy_overrides_severity_and_switches_rules_off() -> None:
    source = "import os\ntoken = os.environ.get('HF_TOKEN')\n"
    assert audit(source)[1].verdict == "deny"
    lowered = with_overrides(DEFAULT, audit={"rules": (("SL802", "low"),)})
    _, report = audit(source, lowered)
    assert report.verdict == "allow" and report.findings[0].severity == "low"
    off = with_overrides(DEFAULT, audit={"rules": (("SL802", "off"),)})
    assert audit(source, off)[0] == set()


def test_allow_and_deny_imports() -> None:
    policy = with_overrides(
        DEFAULT, audit={"allow_imports": ("torch", "diffusers", "typing"), "deny_imports": ("wandb",)}
    )
    _, report = audit("import torch.nn\nfrom diffusers.utils import x\nimport numpy\nimport wandb\n", policy)
    modules = {(f.rule_id, f.line) for f in report.findings}
    assert modules == {("SL101", 3), ("SL101", 4), ("SL102", 4)}
    dynamic, _ = audit("__import__('wan' + 'db')\n", policy)
    assert {"SL102", "SL103", "SL955"} <= dynamic


def test_verdict_modes() -> None:
    source = "eval('1')\n"
    warn = with_overrides(DEFAULT, audit={"mode": "warn"})
    off = with_overrides(DEFAULT, audit={"mode": "off"})
    assert audit(source)[1].verdict == "deny"
    assert audit(source, warn)[1].verdict == "warn"
    _, report = audit(source, off)
    assert report.verdict == "allow" and "AUDIT DISABLED" in report.notes[0]
    medium_only = audit("import pickle\n")[1]
    assert medium_only.verdict == "allow" and medium_only.findings
    assert decide_verdict((), mode="enforce", fail_on="info") == "allow"


def test_relative_imports_are_followed_and_checked() -> None:
    found, report = audit(
        "from .helpers import run\nfrom .missing import y\nfrom ..outside import z\n",
        helpers="import os\nos.system('x')\n",
    )
    assert {"SL202", "SL104", "SL105"} <= found
    assert any(i.how == "relative" for i in report.imports)
    assert set(report.file_hashes) == {"pipeline.py", "helpers.py"}


def test_report_records_imports_hashes_and_source_lines() -> None:
    source = "import torch\nimport importlib\nm = importlib.import_module('numpy')\nn = importlib.import_module(x)\n"
    _, report = audit(source)
    hows = {(i.module, i.how) for i in report.imports}
    assert {("torch", "static"), ("numpy", "importlib"), ("<run-time value>", "importlib")} <= hows
    assert report.file_hashes["pipeline.py"] == hashlib.sha256(source.encode()).hexdigest()
    finding = next(f for f in report.findings if f.rule_id == "SL103")
    assert finding.line == 4 and finding.source_line.startswith("n = importlib")


@pytest.mark.parametrize(
    "source",
    [b"def f(:\n", b"x = 1\x00\n", b"x = " + b"(" * 400 + b"1" + b")" * 400 + b"\n", b"x = " + b"-" * 200_000 + b"1\n"],
    ids=["syntax", "nul", "nested-parens", "deep-unary"],
)
def test_unparsable_or_too_deep_input_is_an_audit_error(source: bytes) -> None:
    with pytest.raises(AuditError, match=r"pipeline\.py"):
        audit_sources({"pipeline.py": source}, DEFAULT, entry="pipeline.py", label="bad")


def test_long_flat_chains_do_not_crash() -> None:
    source = ("x = " + " + ".join(["'a'"] * 900) + "\ny = a" + ".b" * 900 + "\n").encode()
    report = audit_sources({"pipeline.py": source}, DEFAULT, entry="pipeline.py", label="flat")
    assert report.verdict in ("allow", "deny")


def test_oversized_input_is_refused() -> None:
    with pytest.raises(AuditError, match="over the audit limit"):
        audit_sources({"pipeline.py": b"#" * (3 * 1024 * 1024)}, DEFAULT, entry="pipeline.py", label="big")


def test_audit_manifest_reads_verified_bytes(tmp_path: Path) -> None:
    from safeloader.audit import audit_manifest
    from safeloader.resolve.manifest import Manifest, sha256_hex

    data = b"import os\nos.system('id')\n"
    digest = sha256_hex(data)
    (tmp_path / digest[:2]).mkdir()
    (tmp_path / digest[:2] / digest).write_bytes(data)
    manifest = Manifest(
        source="hub",
        source_id="org/name",
        repo="org/name",
        repo_type="model",
        requested_revision="main",
        commit="a" * 40,
        entry="pipeline.py",
        files={"pipeline.py": digest},
        fetched_at="now",
        blob_root=tmp_path,
    )
    report = audit_manifest(manifest, DEFAULT)
    assert report.verdict == "deny" and report.label == f"org/name@{'a' * 40}"
    (tmp_path / digest[:2] / digest).write_bytes(b"print('swapped')\n")
    with pytest.raises(IntegrityError):
        audit_manifest(manifest, DEFAULT)


def test_restricted_enforce_turns_refusal_into_a_finding() -> None:
    strict = with_overrides(DEFAULT, audit={"restricted_python": "enforce"})
    found, report = audit("class A:\n    def f(self):\n        return self.__globals__\n", strict)
    assert "SL499" in found and not report.restricted_python["pipeline.py"].compiled
    off = with_overrides(DEFAULT, audit={"restricted_python": "off"})
    assert audit("x = 1\n", off)[1].restricted_python == {}


def test_policies_readme_documents_every_rule() -> None:
    readme = (Path(__file__).parent.parent / "policies" / "README.md").read_text()
    for rule in RULES.values():
        assert f"| {rule.id} | {rule.family} | `{rule.name}` | {rule.severity} | CWE-{rule.cwe} |" in readme


def test_audit_path_directory_without_pipeline_py_audits_every_file(tmp_path: Path) -> None:
    from safeloader.audit import audit_path

    (tmp_path / "a.py").write_text("from .lib import helper\n")
    (tmp_path / "b.py").write_text("x = 1\n")
    (tmp_path / "lib.py").write_text("import socket\n")
    (tmp_path / "unrelated.txt").write_text("import os; os.system('x')\n")
    report = audit_path(tmp_path, DEFAULT)
    assert set(report.file_hashes) == {"a.py", "b.py", "lib.py"}
    assert [(f.rule_id, f.file) for f in report.findings] == [("SL301", "lib.py")]
    with pytest.raises(AuditError, match="does not exist"):
        audit_path(tmp_path / "missing", DEFAULT)


@pytest.mark.parametrize(
    "source",
    [
        "import gc\ngc.collect()\ngc.disable()\n",
        "import types\ndef f(x: types.FunctionType) -> types.FunctionType | None: ...\n",
        "import types\nfrom typing import Optional\nhook: Optional[types.FunctionType] = None\n",
        "import types\nok = isinstance(f, (types.FunctionType, types.LambdaType)) or type(f) is types.FunctionType\n",
        "from types import FunctionType\nok = issubclass(type(f), FunctionType)\n",
        "import importlib\nm = importlib.import_module('numpy')\n",
        "from importlib import import_module\ntransformers = import_module('transformers')\n",
        "import os\nfor k in os.environ:\n    if k.startswith('CUDA_'):\n        print(k)\n",
    ],
    ids=[
        "gc-collect",
        "functiontype-annotation",
        "functiontype-optional",
        "functiontype-isinstance",
        "functiontype-from-import",
        "import-module-constant",
        "import-module-from",
        "environ-loop-plain",
    ],
)
def test_harmless_constructs_of_real_pipelines_are_not_findings(source: str) -> None:
    found, report = audit(source)
    assert found == set(), report.findings


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("import gc\nlive = gc.get_objects()", "SL704"),
        ("from gc import get_referrers as r", "SL704"),
        ("import types\ntypes.FunctionType(code, {})", "SL404"),
        ("import types\nmake = types.FunctionType", "SL404"),
        ("from types import FunctionType\nFunctionType(code, {})", "SL404"),
        ("import importlib\nimportlib.import_module('subprocess')", "SL201"),
        ("import importlib\nimportlib.import_module(name)", "SL103"),
        ("from importlib import import_module\nimport_module('o' + 's')", "SL103"),
        ("import importlib\nload = importlib.import_module\nload(x)", "SL103"),
        ("from importlib import util", "SL106"),
        ("import os\nleak = {k: v for k, v in os.environ.items() if 'TOKEN' in k}", "SL805"),
        ("import os\nkeys = [k for k in dict(os.environ) if 'SECRET' in k.upper()]", "SL805"),
        ("import os\nfor name in os.environ.keys():\n    if name.endswith('_KEY'):\n        send(name)", "SL805"),
        ("import os\nfor name, value in os.environ.items():\n    if 'PASSWORD' in name:\n        send(value)", "SL805"),
        ("import os\nhome = os.environ.get('HF_HOME')", "SL806"),
        ("import os\np = os.getenv('HF_TOKEN_PATH')", "SL806"),
        ("import os\np = os.path.expanduser('~/.cache/huggingface')", "SL806"),
        ("import huggingface_hub\nt = huggingface_hub.get_token()", "SL806"),
        ("from huggingface_hub import HfFolder\nt = HfFolder.get_token()", "SL806"),
        ("from huggingface_hub.constants import HF_TOKEN_PATH", "SL806"),
    ],
)
def test_precision_and_recall_rules(source: str, rule: str) -> None:
    found, report = audit(source)
    assert rule in found, report.findings
    finding = next(f for f in report.findings if f.rule_id == rule)
    assert finding.severity in ("high", "critical", "medium")


def test_secret_scan_and_hf_access_block_under_default() -> None:
    for source in (
        "import os\nleak = {k: v for k, v in os.environ.items() if 'TOKEN' in k}\n",
        "import os\nhome = os.environ['HF_HOME']\n",
    ):
        assert audit(source)[1].verdict == "deny"
