"""Every custom_pipeline form diffusers 0.42 accepts, resolved against the loopback Hub."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from safeloader.errors import (
    EntryFileNotFoundError,
    InvalidSpecError,
    PathTraversalError,
    RepoNotFoundError,
    RevisionNotFoundError,
    SourceDenied,
    UnpinnedRevisionError,
)
from safeloader.policy import Policy, load_policy, with_overrides
from safeloader.resolve import resolve_commit, resolve_pipeline, resolve_repo_files
from safeloader.resolve.manifest import sha256_hex
from tests.fixtures.hub_plugin import community_version_folder, seed_community
from tests.fixtures.hub_server import LoopbackHub

PIPELINE = b"from .helpers import double\n\nclass P:\n    value = double(2)\n"
HELPERS = b"from .sub.deep import one\n\ndef double(x):\n    return 2 * x * one()\n"
DEEP = b"from .. import consts\n\ndef one():\n    return consts.ONE\n"
CONSTS = b"ONE = 1\n"
TREE = {
    "pipeline.py": PIPELINE,
    "helpers.py": HELPERS,
    "sub/__init__.py": b"",
    "sub/deep.py": DEEP,
    "consts.py": CONSTS,
    "README.md": b"not code\n",
}
CLOSURE = {"pipeline.py", "helpers.py", "sub/__init__.py", "sub/deep.py", "consts.py"}


@pytest.fixture
def policy() -> Policy:
    return load_policy("default")


def test_hub_repo_with_nested_relative_imports(
    loopback_hub: LoopbackHub, policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    sha = loopback_hub.create_repo("org/pipe", TREE)
    with caplog.at_level(logging.WARNING, logger="safeloader"):
        manifest = resolve_pipeline("org/pipe", policy=policy)
    assert manifest.source == "hub" and manifest.source_id == "org/pipe" and manifest.commit == sha
    assert set(manifest.files) == CLOSURE
    assert manifest.read_verified("sub/deep.py") == DEEP
    assert manifest.files["pipeline.py"] == sha256_hex(PIPELINE)
    assert not manifest.pinned
    assert sha in manifest.notes["unpinned_warning"] and sha in caplog.text


def test_hub_repo_pinned_has_no_warning(loopback_hub: LoopbackHub, policy: Policy) -> None:
    sha = loopback_hub.create_repo("org/pipe", TREE)
    manifest = resolve_pipeline("org/pipe", revision=sha, policy=policy)
    assert manifest.pinned and "unpinned_warning" not in manifest.notes


def test_tag_resolves_to_its_commit(loopback_hub: LoopbackHub, policy: Policy) -> None:
    first = loopback_hub.create_repo("org/pipe", TREE)
    loopback_hub.set_ref("org/pipe", "v1", first)
    loopback_hub.commit("org/pipe", {**TREE, "pipeline.py": b"X = 2\n"})
    assert resolve_commit("org/pipe", "v1") == first
    manifest = resolve_pipeline("org/pipe", revision="v1", policy=policy)
    assert manifest.commit == first and manifest.read_verified("pipeline.py") == PIPELINE


def test_require_pinned_names_the_sha(loopback_hub: LoopbackHub) -> None:
    sha = loopback_hub.create_repo("org/pipe", TREE)
    strict_pins = with_overrides(load_policy("default"), sources={"require_pinned_revision": True})
    with pytest.raises(UnpinnedRevisionError, match=sha):
        resolve_pipeline("org/pipe", revision="main", policy=strict_pins)
    assert resolve_pipeline("org/pipe", revision=sha, policy=strict_pins).pinned


def test_local_directory(tmp_path: Path, policy: Policy) -> None:
    for rel, data in TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    manifest = resolve_pipeline(tmp_path, policy=policy)
    assert manifest.source == "local_dir" and manifest.source_id == f"local:{tmp_path.resolve()}"
    assert set(manifest.files) == CLOSURE and manifest.commit is None
    # The cached copy is what runs: editing the directory afterwards does not change it.
    (tmp_path / "helpers.py").write_bytes(b"import os\n")
    assert manifest.read_verified("helpers.py") == HELPERS


def test_local_py_file(tmp_path: Path, policy: Policy) -> None:
    (tmp_path / "my_pipe.py").write_bytes(b"from .consts import ONE\n")
    (tmp_path / "consts.py").write_bytes(CONSTS)
    manifest = resolve_pipeline(str(tmp_path / "my_pipe.py"), policy=policy)
    assert manifest.source == "local_file" and manifest.entry == "my_pipe.py"
    assert set(manifest.files) == {"my_pipe.py", "consts.py"}


def test_tilde_paths_expand_as_a_shell_expands_them(
    tmp_path: Path, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_pipe.py").write_bytes(CONSTS)
    monkeypatch.setenv("HOME", str(tmp_path))
    manifest = resolve_pipeline("~/my_pipe.py", policy=policy)
    assert manifest.source_id == f"local:{(tmp_path / 'my_pipe.py').resolve()}" and manifest.entry == "my_pipe.py"
    # ~name of no user stays as written, as in a shell (pathlib's expanduser raised RuntimeError here).
    with pytest.raises(EntryFileNotFoundError, match=r"~no-such-user-safeloader/pipe\.py does not exist"):
        resolve_pipeline("~no-such-user-safeloader/pipe.py", policy=policy)


def test_local_symlink_out_of_root_refused(tmp_path: Path, policy: Policy) -> None:
    outside = tmp_path / "outside.py"
    outside.write_bytes(b"X = 1\n")
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "pipeline.py").write_bytes(b"from .evil import X\n")
    (pipe / "evil.py").symlink_to(outside)
    with pytest.raises(PathTraversalError):
        resolve_pipeline(pipe, policy=policy)


def test_community_default_main_and_release_folders(loopback_hub: LoopbackHub, policy: Policy) -> None:
    version = community_version_folder()
    files = {
        f"{version}/one_step.py": b"from .util import f\n",
        f"{version}/util.py": b"def f(): ...\n",
        "main/one_step.py": b"MAIN = True\n",
        "v0.30.0/one_step.py": b"OLD = True\n",
    }
    sha = loopback_hub.create_repo("diffusers/community-pipelines-mirror", files, repo_type="dataset")
    default = resolve_pipeline("one_step", policy=policy)
    assert default.source == "community" and default.source_id == "community:one_step"
    assert default.repo_type == "dataset" and default.subfolder == version and default.commit == sha
    assert set(default.files) == {"one_step.py", "util.py"}
    assert resolve_pipeline("one_step", revision="main", policy=policy).read_verified("one_step.py") == b"MAIN = True\n"
    old = resolve_pipeline("one_step", revision="0.30.0", policy=policy)
    assert old.subfolder == "v0.30.0" and old.read_verified("one_step.py") == b"OLD = True\n"
    pinned = resolve_pipeline("one_step", revision=sha, policy=policy)
    assert pinned.pinned and pinned.subfolder == version
    with pytest.raises(RevisionNotFoundError):
        resolve_pipeline("one_step", revision="not-a-version", policy=policy)
    with pytest.raises(EntryFileNotFoundError):
        resolve_pipeline("no_such_pipeline", policy=policy)


def test_pipeline_file_inside_model_repo(loopback_hub: LoopbackHub, policy: Policy) -> None:
    sha = loopback_hub.create_repo(
        "org/model",
        {"model_index.json": b"{}", "my_pipe.py": b"from .parts import x\n", "parts.py": b"x = 1\n"},
    )
    manifest = resolve_pipeline("my_pipe", policy=policy, model_repo="org/model", model_revision=sha)
    assert manifest.source == "model_repo" and manifest.entry == "my_pipe.py" and manifest.commit == sha
    assert set(manifest.files) == {"my_pipe.py", "parts.py"}


def test_resolve_repo_files_for_custom_components(loopback_hub: LoopbackHub, policy: Policy) -> None:
    sha = loopback_hub.create_repo(
        "org/model",
        {"unet/my_unet.py": b"from ..shared import k\n", "shared.py": b"k = 1\n", "vae/my_vae.py": b"V = 1\n"},
    )
    manifest = resolve_repo_files("org/model", ["unet/my_unet.py", "vae/my_vae.py"], revision="main", policy=policy)
    assert manifest.entry == "unet/my_unet.py" and manifest.commit == sha and manifest.source == "model_repo"
    assert set(manifest.files) == {"unet/my_unet.py", "shared.py", "vae/my_vae.py"}


@pytest.mark.parametrize(
    "source",
    [b"from ..outside import x\n", b"from ... import x\n", b"def f():\n    from ..up import y\n"],
)
def test_relative_import_leaving_root_refused(loopback_hub: LoopbackHub, policy: Policy, source: bytes) -> None:
    loopback_hub.create_repo("org/evil", {"pipeline.py": source, "outside.py": b""})
    with pytest.raises(PathTraversalError):
        resolve_pipeline("org/evil", policy=policy)


def test_traversal_names_refused(loopback_hub: LoopbackHub, policy: Policy) -> None:
    loopback_hub.create_repo("org/model", {"a.py": b""})
    for bad in ("../a.py", "/etc/passwd.py", "unet/../../a.py"):
        with pytest.raises(PathTraversalError):
            resolve_repo_files("org/model", [bad], revision="main", policy=policy)


def test_hub_errors_map_to_safeloader_errors(loopback_hub: LoopbackHub, policy: Policy) -> None:
    loopback_hub.create_repo("org/pipe", {"pipeline.py": b"from .missing import x\n"})
    loopback_hub.create_repo("org/empty", {"README.md": b""})
    with pytest.raises(RepoNotFoundError, match="org/nope"):
        resolve_pipeline("org/nope", policy=policy)
    with pytest.raises(RevisionNotFoundError, match="nobranch"):
        resolve_pipeline("org/pipe", revision="nobranch", policy=policy)
    with pytest.raises(EntryFileNotFoundError, match=r"pipeline\.py"):
        resolve_pipeline("org/empty", policy=policy)
    with pytest.raises(EntryFileNotFoundError, match="missing"):
        resolve_pipeline("org/pipe", policy=policy)
    with pytest.raises(InvalidSpecError):
        resolve_pipeline("a/b/c", policy=policy)
    with pytest.raises(EntryFileNotFoundError):
        resolve_pipeline("./no_such_file.py", policy=policy)


def test_sources_deny(loopback_hub: LoopbackHub) -> None:
    loopback_hub.create_repo("org/pipe", {"pipeline.py": b""})
    denying = with_overrides(load_policy("default"), sources={"allow": ("trusted/*",)})
    with pytest.raises(SourceDenied, match="org/pipe"):
        resolve_pipeline("org/pipe", policy=denying)
    assert loopback_hub.count("GET", "/resolve/") == 0
    with pytest.raises(SourceDenied, match="community:x"):
        resolve_pipeline("x", policy=denying)


def test_seed_community_helper(loopback_hub: LoopbackHub, policy: Policy) -> None:
    seed_community(loopback_hub, {"clip_guided.py": b"C = 1\n"})
    assert resolve_pipeline("clip_guided", revision="main", policy=policy).read_verified("clip_guided.py") == b"C = 1\n"
