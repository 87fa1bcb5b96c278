"""End to end: the drop-in `from_pretrained` on every path by which diffusers runs foreign code.

Real torch, diffusers and huggingface_hub throughout: models are served by the loopback Hub and
pipelines run in the sandboxed worker; outputs are compared with in-process diffusers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import safeloader
from safeloader import DiffusionPipeline
from safeloader.errors import (
    AuditDenied,
    PickleWeightsRefused,
    RemoteCodeNotTrusted,
    SignatureRequiredError,
    SourceDenied,
    UnpinnedRevisionError,
)
from safeloader.policy import load_policy, with_overrides

PIPELINES = Path(__file__).parent / "pipelines"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _seeded_pipeline_files() -> dict[str, bytes]:
    return {
        "pipeline.py": (PIPELINES / "seeded_ddpm.py").read_bytes(),
        "sampling.py": (PIPELINES / "sampling.py").read_bytes(),
    }


@pytest.fixture(scope="module")
def reference_images(tiny_model_dir: Path) -> np.ndarray:
    """In-process diffusers DDPMPipeline, seed 0, 2 steps: what the sandboxed pipeline must equal."""
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
    return np.asarray(out.images)


@pytest.fixture
def seeded_pipeline_dir(tmp_path: Path) -> Path:
    root = tmp_path / "seeded_ddpm"
    root.mkdir()
    for name, data in _seeded_pipeline_files().items():
        (root / name).write_bytes(data)
    return root


def _run_seeded(pipe: Any) -> np.ndarray:
    try:
        out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
        return np.asarray(out.images)
    finally:
        pipe.close()


@pytest.fixture
def hub_model(loopback_hub: Any, tiny_model_dir: Path) -> Iterator[tuple[str, str]]:
    sha = loopback_hub.create_repo("tiny/ddpm", _files(tiny_model_dir))
    yield "tiny/ddpm", sha


def test_local_model_local_pipeline_dir_matches_in_process(
    tiny_model_dir: Path, seeded_pipeline_dir: Path, reference_images: np.ndarray
) -> None:
    pipe = DiffusionPipeline.from_pretrained(
        str(tiny_model_dir), custom_pipeline=str(seeded_pipeline_dir), trust_remote_code=True
    )
    assert pipe.safeloader.audit.verdict == "allow"
    assert pipe.safeloader.sandbox.all_active
    np.testing.assert_array_equal(_run_seeded(pipe), reference_images)


def test_local_py_file_pipeline(tiny_model_dir: Path, tmp_path: Path, reference_images: np.ndarray) -> None:
    # A single .py file cannot import helpers relatively; inline the helper for this form.
    source = (PIPELINES / "seeded_ddpm.py").read_text().replace("from .sampling import denoise\n", "")
    source += "\n\n" + (PIPELINES / "sampling.py").read_text().split('"""', 2)[2]
    path = tmp_path / "seeded_single.py"
    path.write_text(source)
    pipe = DiffusionPipeline.from_pretrained(str(tiny_model_dir), custom_pipeline=str(path), trust_remote_code=True)
    np.testing.assert_array_equal(_run_seeded(pipe), reference_images)


def test_hub_model_hub_pipeline_pinned(
    loopback_hub: Any, hub_model: tuple[str, str], reference_images: np.ndarray
) -> None:
    code_sha = loopback_hub.create_repo("someone/seeded-ddpm", _seeded_pipeline_files())
    pipe = DiffusionPipeline.from_pretrained(
        hub_model[0],
        revision=hub_model[1],
        custom_pipeline="someone/seeded-ddpm",
        custom_revision=code_sha,
        trust_remote_code=True,
        policy="default",
    )
    assert pipe.safeloader.manifest.commit == code_sha
    assert pipe.safeloader.manifest.pinned
    np.testing.assert_array_equal(_run_seeded(pipe), reference_images)


def test_community_pipeline_via_mirror(
    loopback_hub: Any, hub_model: tuple[str, str], reference_images: np.ndarray
) -> None:
    import diffusers

    source = (PIPELINES / "seeded_ddpm.py").read_text().replace("from .sampling import denoise\n", "")
    source += "\n\n" + (PIPELINES / "sampling.py").read_text().split('"""', 2)[2]
    version = "v" + ".".join(diffusers.__version__.split(".")[:3])
    loopback_hub.create_repo(
        "diffusers/community-pipelines-mirror",
        {f"{version}/seeded_ddpm.py": source.encode(), "main/seeded_ddpm.py": source.encode()},
        repo_type="dataset",
    )
    with pytest.raises(RemoteCodeNotTrusted):
        # diffusers leaves the community branch unguarded; safeloader does not.
        DiffusionPipeline.from_pretrained(hub_model[0], custom_pipeline="seeded_ddpm")
    pipe = DiffusionPipeline.from_pretrained(hub_model[0], custom_pipeline="seeded_ddpm", trust_remote_code=True)
    assert pipe.safeloader.manifest.source == "community"
    np.testing.assert_array_equal(_run_seeded(pipe), reference_images)


def test_pipeline_file_inside_model_repo(loopback_hub: Any, tiny_model_dir: Path, reference_images: np.ndarray) -> None:
    files = _files(tiny_model_dir)
    files["seeded_ddpm.py"] = (PIPELINES / "seeded_ddpm.py").read_bytes()
    files["sampling.py"] = (PIPELINES / "sampling.py").read_bytes()
    sha = loopback_hub.create_repo("tiny/ddpm-with-code", files)
    pipe = DiffusionPipeline.from_pretrained(
        "tiny/ddpm-with-code", revision=sha, custom_pipeline="seeded_ddpm", trust_remote_code=True
    )
    assert pipe.safeloader.manifest.commit == sha
    assert set(pipe.safeloader.manifest.files) == {"seeded_ddpm.py", "sampling.py"}
    np.testing.assert_array_equal(_run_seeded(pipe), reference_images)


def _class_name_repo_files(tiny_model_dir: Path) -> dict[str, bytes]:
    """The tiny model whose model_index.json names the seeded pipeline module in `_class_name`."""
    files = _files(tiny_model_dir)
    index = json.loads(files["model_index.json"])
    index["_class_name"] = ["seeded_ddpm", "SeededDDPMPipeline"]
    files["model_index.json"] = json.dumps(index).encode()
    files["seeded_ddpm.py"] = (PIPELINES / "seeded_ddpm.py").read_bytes()
    files["sampling.py"] = (PIPELINES / "sampling.py").read_bytes()
    return files


def test_model_index_class_name_names_a_py_file(
    loopback_hub: Any, tiny_model_dir: Path, reference_images: np.ndarray
) -> None:
    files = _class_name_repo_files(tiny_model_dir)
    loopback_hub.create_repo("tiny/ddpm-class-name", files)
    with pytest.raises(RemoteCodeNotTrusted):
        DiffusionPipeline.from_pretrained("tiny/ddpm-class-name")
    pipe = DiffusionPipeline.from_pretrained("tiny/ddpm-class-name", trust_remote_code=True)
    np.testing.assert_array_equal(_run_seeded(pipe), reference_images)


CUSTOM_UNET = b'''
from diffusers import UNet2DModel


class MyUNet(UNet2DModel):
    """A custom component: the same UNet, marked so the test can see it was the custom class."""

    is_custom_component = True
'''


def test_custom_component_runs_verified_code_in_worker(
    loopback_hub: Any, tiny_model_dir: Path, reference_images: np.ndarray
) -> None:
    files = _files(tiny_model_dir)
    index = json.loads(files["model_index.json"])
    index["unet"] = ["my_unet", "MyUNet"]
    files["model_index.json"] = json.dumps(index).encode()
    files["unet/my_unet.py"] = CUSTOM_UNET
    loopback_hub.create_repo("tiny/ddpm-custom-unet", files)
    with pytest.raises(RemoteCodeNotTrusted):
        DiffusionPipeline.from_pretrained("tiny/ddpm-custom-unet")
    pipe = DiffusionPipeline.from_pretrained("tiny/ddpm-custom-unet", trust_remote_code=True)
    try:
        assert pipe.components["unet"] == "MyUNet" or "MyUNet" in str(pipe.components["unet"])
        assert "unet/my_unet.py" in pipe.safeloader.manifest.files
    finally:
        pipe.close()


def test_trust_remote_code_false_refuses_local_code(tiny_model_dir: Path, seeded_pipeline_dir: Path) -> None:
    with pytest.raises(RemoteCodeNotTrusted, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(str(tiny_model_dir), custom_pipeline=str(seeded_pipeline_dir))


def test_plain_pipeline_loads_in_worker_by_default(tiny_model_dir: Path, reference_images: np.ndarray) -> None:
    pipe = DiffusionPipeline.from_pretrained(str(tiny_model_dir))
    assert pipe.safeloader.sandbox.all_active
    np.testing.assert_array_equal(_run_seeded(pipe), reference_images)


def test_plain_pipeline_in_process_when_policy_says_so(tiny_model_dir: Path, reference_images: np.ndarray) -> None:
    import diffusers

    policy = with_overrides(load_policy("default"), sandbox={"isolate_plain_pipelines": False})
    pipe = DiffusionPipeline.from_pretrained(str(tiny_model_dir), policy=policy)
    assert isinstance(pipe, diffusers.DDPMPipeline)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
    np.testing.assert_array_equal(np.asarray(out.images), reference_images)


def _with_pickle_unet(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    weights = dest / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), dest / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    return dest


def test_pickle_weights_refused_then_allowed(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _with_pickle_unet(tiny_model_dir, tmp_path / "pickled")
    with pytest.raises(PickleWeightsRefused, match=r"unet/diffusion_pytorch_model\.bin.*safetensors"):
        DiffusionPipeline.from_pretrained(str(model))
    policy = with_overrides(load_policy("default"), weights={"allow_pickle": True})
    pipe = DiffusionPipeline.from_pretrained(str(model), policy=policy)
    from diffusers import DDPMPipeline

    in_process = DDPMPipeline.from_pretrained(model)
    in_process.set_progress_bar_config(disable=True)
    expected = in_process(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np").images
    np.testing.assert_array_equal(_run_seeded(pipe), np.asarray(expected))


def test_policy_denying_the_source_refuses_before_any_code_runs(
    loopback_hub: Any, hub_model: tuple[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    loopback_hub.create_repo("evil/pipe", {"pipeline.py": f"open({str(marker)!r}, 'w').write('x')\n".encode()})
    policy = with_overrides(load_policy("default"), sources={"deny": ("evil/*",)})
    with pytest.raises(SourceDenied):
        DiffusionPipeline.from_pretrained(
            hub_model[0], custom_pipeline="evil/pipe", trust_remote_code=True, policy=policy
        )
    assert not marker.exists()


def test_audit_deny_refuses_before_any_code_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    code = tmp_path / "evil"
    code.mkdir()
    marker = tmp_path / "ran"
    (code / "pipeline.py").write_text(f"import os\nos.system('touch {marker}')\n")
    with pytest.raises(AuditDenied) as info:
        DiffusionPipeline.from_pretrained(str(tiny_model_dir), custom_pipeline=str(code), trust_remote_code=True)
    assert info.value.report is not None
    assert not marker.exists()


def test_strict_policy_refuses_unpinned_revision_naming_the_sha(loopback_hub: Any, hub_model: tuple[str, str]) -> None:
    code_sha = loopback_hub.create_repo("someone/seeded-ddpm", _seeded_pipeline_files())
    with pytest.raises(UnpinnedRevisionError, match=code_sha):
        DiffusionPipeline.from_pretrained(
            hub_model[0], custom_pipeline="someone/seeded-ddpm", trust_remote_code=True, policy="strict"
        )


def test_strict_policy_refuses_missing_signature(loopback_hub: Any, hub_model: tuple[str, str]) -> None:
    code_sha = loopback_hub.create_repo("someone/seeded-ddpm", _seeded_pipeline_files())
    with pytest.raises(SignatureRequiredError):
        DiffusionPipeline.from_pretrained(
            hub_model[0],
            custom_pipeline="someone/seeded-ddpm",
            custom_revision=code_sha,
            trust_remote_code=True,
            policy="strict",
        )


def test_install_routes_unmodified_diffusers_code(
    tiny_model_dir: Path, seeded_pipeline_dir: Path, reference_images: np.ndarray
) -> None:
    import diffusers
    from diffusers.utils import dynamic_modules_utils

    original = diffusers.DiffusionPipeline.__dict__["from_pretrained"]
    safeloader.install(policy="default")
    safeloader.install(policy="default")  # idempotent
    try:
        # Unmodified user code, exactly as written against diffusers:
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            str(tiny_model_dir), custom_pipeline=str(seeded_pipeline_dir), trust_remote_code=True
        )
        assert type(pipe).__name__ == "RemotePipeline"
        np.testing.assert_array_equal(_run_seeded(pipe), reference_images)
        # Nothing foreign can be imported in this process while installed.
        with pytest.raises(RemoteCodeNotTrusted):
            dynamic_modules_utils.get_class_from_dynamic_module(str(seeded_pipeline_dir), "pipeline.py")
    finally:
        safeloader.uninstall()
        safeloader.uninstall()
    assert diffusers.DiffusionPipeline.__dict__["from_pretrained"] is original


def test_install_keeps_concrete_diffusers_classes_and_plain_in_process_loads(
    tiny_model_dir: Path, reference_images: np.ndarray
) -> None:
    import diffusers

    safeloader.install(policy="default")
    try:
        pipe = diffusers.DDPMPipeline.from_pretrained(str(tiny_model_dir))
        assert type(pipe).__name__ == "RemotePipeline"
        assert pipe.safeloader.sandbox.all_active
        np.testing.assert_array_equal(_run_seeded(pipe), reference_images)
        # isolate_plain_pipelines = false: in-process, through diffusers' own loader (no recursion).
        policy = with_overrides(load_policy("default"), sandbox={"isolate_plain_pipelines": False})
        local = diffusers.DDPMPipeline.from_pretrained(str(tiny_model_dir), policy=policy)
        assert isinstance(local, diffusers.DDPMPipeline)
    finally:
        safeloader.uninstall()


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("not/a/repo/id", "InvalidSpecError"),
        ("nobody/missing-model", "RepoNotFoundError"),
        ("~no-such-user-safeloader/model", "InvalidSpecError"),  # no such home: neither a folder nor a repo id
    ],
)
def test_bad_model_references_are_clear_errors(loopback_hub: Any, model: str, error: str) -> None:
    with pytest.raises(safeloader.SafeLoaderError) as info:
        DiffusionPipeline.from_pretrained(model)
    assert type(info.value).__name__ == error


def test_directory_without_model_index_and_bad_policy_and_object_kwargs(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safeloader.errors import EntryFileNotFoundError, InvalidSpecError, PolicyError

    with pytest.raises(EntryFileNotFoundError, match=r"model_index\.json"):
        DiffusionPipeline.from_pretrained(str(tmp_path))
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text("[sandbox]\nnetwork = 'yes'\n")
    with pytest.raises(PolicyError, match=r"sandbox\.network"):
        DiffusionPipeline.from_pretrained(str(tiny_model_dir), policy=bad_policy)
    with pytest.raises(InvalidSpecError, match="cannot cross into the sandbox"):
        DiffusionPipeline.from_pretrained(str(tiny_model_dir), scheduler=object())


@pytest.mark.parametrize("fault", ["endless", "wrong_bytes"])
def test_hostile_hub_weights_are_cut_off_and_never_used(
    loopback_hub: Any, tiny_model_dir: Path, fault: str, tmp_path: Path
) -> None:
    from safeloader.errors import IntegrityError

    loopback_hub.create_repo("tiny/ddpm-hostile", _files(tiny_model_dir))
    weights = "diffusion_pytorch_model.safetensors"
    if fault == "endless":
        loopback_hub.serve_endless_body(weights)
    else:
        real = (tiny_model_dir / "unet" / weights).read_bytes()
        loopback_hub.serve_wrong_bytes(weights, bytes(len(real)))
    cache = tmp_path / "hf-cache"
    with pytest.raises(IntegrityError, match="Hub lists for it"):
        DiffusionPipeline.from_pretrained("tiny/ddpm-hostile", cache_dir=str(cache))
    assert not [p for p in cache.rglob(weights) if p.exists()], "an unverified weight file was left in the cache"
    loopback_hub.clear_faults()
    pipe = DiffusionPipeline.from_pretrained("tiny/ddpm-hostile", cache_dir=str(cache))
    pipe.close()


def _repo_with_code_in_it(loopback_hub: Any, tiny_model_dir: Path, repo_id: str) -> str:
    files = _files(tiny_model_dir)
    files.update(_seeded_pipeline_files())
    files["seeded_ddpm.py"] = files.pop("pipeline.py")
    return str(loopback_hub.create_repo(repo_id, files))


def test_code_inside_the_model_repo_follows_the_pin_rule(loopback_hub: Any, tiny_model_dir: Path) -> None:
    sha = _repo_with_code_in_it(loopback_hub, tiny_model_dir, "tiny/pinned-code")
    pinned_only = with_overrides(load_policy("default"), sources={"require_pinned_revision": True})
    with pytest.raises(UnpinnedRevisionError, match=sha):
        DiffusionPipeline.from_pretrained(
            "tiny/pinned-code", custom_pipeline="seeded_ddpm", trust_remote_code=True, policy=pinned_only
        )
    pipe = DiffusionPipeline.from_pretrained(
        "tiny/pinned-code", revision=sha, custom_pipeline="seeded_ddpm", trust_remote_code=True, policy=pinned_only
    )
    pipe.close()


def test_a_lockfile_must_cover_code_inside_the_model_repo(
    loopback_hub: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safeloader.errors import LockfileError

    sha = _repo_with_code_in_it(loopback_hub, tiny_model_dir, "tiny/locked-code")
    other = tmp_path / "other"
    other.mkdir()
    (other / "pipeline.py").write_text("X = 1\n")
    lockfile = tmp_path / "safeloader.lock"
    from safeloader.cli import main

    assert main(["lock", str(other), "-o", str(lockfile)]) == 0
    with pytest.raises(LockfileError):
        DiffusionPipeline.from_pretrained(
            "tiny/locked-code", revision=sha, custom_pipeline="seeded_ddpm", trust_remote_code=True, lockfile=lockfile
        )


def test_class_name_module_is_gated_even_next_to_a_custom_pipeline(
    loopback_hub: Any, tiny_model_dir: Path, seeded_pipeline_dir: Path
) -> None:
    files = _class_name_repo_files(tiny_model_dir)
    loopback_hub.create_repo("tiny/class-name-and-custom", files)
    with pytest.raises(RemoteCodeNotTrusted, match=r"seeded_ddpm\.py"):
        DiffusionPipeline.from_pretrained("tiny/class-name-and-custom", custom_pipeline=str(seeded_pipeline_dir))
    # diffusers builds the `_class_name` class here; it must have come through the gate, verified.
    pipe = DiffusionPipeline.from_pretrained(
        "tiny/class-name-and-custom", custom_pipeline=str(seeded_pipeline_dir), trust_remote_code=True
    )
    try:
        assert "seeded_ddpm.py" in pipe.safeloader.manifests[0].files
        assert type(pipe).__name__ == "RemotePipeline"
    finally:
        pipe.close()


def test_self_referencing_kwargs_are_a_clear_error(tiny_model_dir: Path) -> None:
    from safeloader.errors import InvalidSpecError

    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidSpecError, match="nests more than"):
        DiffusionPipeline.from_pretrained(str(tiny_model_dir), device_map=loop)
