"""auto_map code, sandboxed: ``safeloader.transformers``, ``safeloader.AutoModel``, diffusers' AutoModel under install.

The repository's configuration, model and tokenizer classes are its own ``.py`` files, and each writes a marker
when it runs. The sandboxed objects must equal the same repository loaded in-process with transformers (from
a copy with its own marker), with the same seed; the sandboxed copy's marker must never appear.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import safeloader
from safeloader import transformers as sandboxed
from safeloader.errors import (
    AuditDenied,
    RemoteCodeNotTrusted,
    SignatureRequiredError,
    SourceDenied,
    UnpinnedRevisionError,
)
from safeloader.policy import load_policy, with_overrides
from tests.fixtures.remote_code import build_pipeline_with_remote_text_encoder, build_remote_code_model
from tests.fixtures.tiny_sd import PROMPT

IDS = torch.tensor([[2, 5, 8, 4, 43, 3]])


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def remote_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("remote-code")
    return {
        "model": build_remote_code_model(root / "model", root / "sandboxed-marker"),
        "marker": root / "sandboxed-marker",
        "reference": build_remote_code_model(root / "reference", root / "reference-marker"),
    }


@pytest.fixture(scope="module")
def reference(remote_dirs: dict[str, Path]) -> dict[str, Any]:
    """The same repository loaded in-process by transformers (its own copy and marker)."""
    import transformers

    path = remote_dirs["reference"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = transformers.AutoModel.from_pretrained(path, trust_remote_code=True)
    causal = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    extractor = transformers.pipeline("feature-extraction", model=str(path), trust_remote_code=True)
    with torch.no_grad():
        return {
            "ids": tokenizer(PROMPT, return_tensors="pt")["input_ids"],
            "decoded": tokenizer.decode([5, 8, 43]),
            "hidden": model(IDS, generator=torch.Generator().manual_seed(0)).last_hidden_state,
            "logits": causal(IDS).logits,
            "features": extractor([PROMPT]),
        }


@pytest.fixture(scope="module")
def tokenizer(remote_dirs: dict[str, Path]) -> Iterator[Any]:
    """The sandboxed tokenizer; every other transformers object of this module shares its worker."""
    remote = sandboxed.AutoTokenizer.from_pretrained(remote_dirs["model"], trust_remote_code=True)
    yield remote
    remote.close()


def test_transformers_auto_classes_run_repository_code_only_in_the_worker(
    remote_dirs: dict[str, Path], tokenizer: Any, reference: dict[str, Any]
) -> None:
    path = remote_dirs["model"]
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    torch.testing.assert_close(ids, reference["ids"], rtol=0, atol=0)
    assert tokenizer.decode([5, 8, 43]) == reference["decoded"]
    assert tokenizer.safeloader.audit.verdict == "allow"
    assert "tokenization_tiny.py" in tokenizer.safeloader.manifest.files

    model = sandboxed.AutoModel.from_pretrained(path, trust_remote_code=True, worker=tokenizer)
    assert type(model).__name__ == "RemoteModel"
    assert (model.config.hidden_size, model.config.model_type) == (16, "tiny-remote")
    assert model.dtype == torch.float32 and str(model.device) == "cpu"
    out = model(IDS, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(out.last_hidden_state.numpy(), reference["hidden"].numpy())
    np.testing.assert_array_equal(out[0].numpy(), reference["hidden"].numpy())

    causal = sandboxed.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, worker=tokenizer)
    np.testing.assert_array_equal(causal(IDS).logits.numpy(), reference["logits"].numpy())

    config = sandboxed.AutoConfig.from_pretrained(path, trust_remote_code=True, worker=tokenizer)
    assert type(config).__name__ == "RemoteConfig"
    assert config.to_dict()["noise_scale"] == 0.5 and config.hidden_size == 16

    processor = sandboxed.AutoProcessor.from_pretrained(path, trust_remote_code=True, worker=tokenizer)
    torch.testing.assert_close(processor(PROMPT, return_tensors="pt")["input_ids"], reference["ids"], rtol=0, atol=0)

    extractor = sandboxed.pipeline("feature-extraction", model=path, trust_remote_code=True, worker=tokenizer)
    np.testing.assert_array_equal(np.asarray(extractor([PROMPT])), np.asarray(reference["features"]))

    assert model.to(torch.float64) is model and model.dtype == torch.float64
    assert model(IDS).last_hidden_state.dtype == torch.float64
    assert set(model.safeloader.manifest.files) == {"configuration_tiny.py", "modeling_tiny.py", "tokenization_tiny.py"}
    assert not remote_dirs["marker"].exists(), "repository code ran in the caller"


def test_repository_code_is_refused_without_trust_and_audited(remote_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RemoteCodeNotTrusted, match=r"modeling_tiny\.py.*trust_remote_code=True"):
        sandboxed.AutoModel.from_pretrained(remote_dirs["model"])
    with pytest.raises(RemoteCodeNotTrusted, match="trust_remote_code=True"):
        safeloader.AutoModel.from_pretrained(remote_dirs["model"])
    marker = tmp_path / "evil-ran"
    evil = build_remote_code_model(tmp_path / "evil", marker, tokenizer=False)
    with (evil / "modeling_tiny.py").open("a") as handle:
        handle.write(f"\nimport os\nos.system('touch {marker}')\n")
    with pytest.raises(AuditDenied):
        sandboxed.AutoModel.from_pretrained(evil, trust_remote_code=True)
    assert not marker.exists() and not remote_dirs["marker"].exists()


def _sd_reference(pipeline_dir: Path) -> np.ndarray:
    import diffusers
    import transformers

    text_encoder = transformers.AutoModel.from_pretrained(pipeline_dir / "text_encoder", trust_remote_code=True)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(pipeline_dir, text_encoder=text_encoder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
    return np.asarray(out.images)


def _run_sd(pipe: Any) -> np.ndarray:
    out = pipe(PROMPT, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
    return np.asarray(out.images)


@pytest.fixture(scope="module")
def sd_reference(tmp_path_factory: pytest.TempPathFactory, tiny_sd_dir: Path) -> np.ndarray:
    root = tmp_path_factory.mktemp("sd-reference")
    reference_dir = build_pipeline_with_remote_text_encoder(
        root / "ref", tiny_sd_dir, root / "ref-marker", index_class="PreTrainedModel"
    )
    return _sd_reference(reference_dir)


def test_automodel_subfolder_is_handed_to_a_pipeline_in_the_same_worker(
    tmp_path: Path, tiny_sd_dir: Path, sd_reference: np.ndarray
) -> None:
    marker = tmp_path / "sandboxed-marker"
    pipeline_dir = build_pipeline_with_remote_text_encoder(
        tmp_path / "pipe", tiny_sd_dir, marker, index_class="PreTrainedModel"
    )
    text_encoder = safeloader.AutoModel.from_pretrained(pipeline_dir, subfolder="text_encoder", trust_remote_code=True)
    try:
        assert text_encoder.safeloader.manifest.files.keys() == {
            "text_encoder/configuration_tiny.py",
            "text_encoder/modeling_tiny.py",
        }
        pipe = safeloader.DiffusionPipeline.from_pretrained(
            pipeline_dir, text_encoder=text_encoder, trust_remote_code=True
        )
        assert pipe.session is text_encoder.session, "the pipeline must be built in the model's worker"
        np.testing.assert_array_equal(_run_sd(pipe), sd_reference)
    finally:
        text_encoder.close()
    assert not marker.exists(), "repository code ran in the caller"


def test_a_pipeline_naming_an_auto_map_component_gates_its_code(tmp_path: Path, tiny_sd_dir: Path) -> None:
    """``["transformers", "AutoModel"]`` + auto_map: the component's code is part of the pipeline's foreign code.

    (diffusers 0.42 itself cannot build a pipeline whose index names ``AutoModel``; the component loads with
    ``AutoModel.from_pretrained(..., subfolder=...)``, tested above and below.)
    """
    marker = tmp_path / "sandboxed-marker"
    pipeline_dir = build_pipeline_with_remote_text_encoder(tmp_path / "pipe", tiny_sd_dir, marker)
    with pytest.raises(RemoteCodeNotTrusted, match=r"text_encoder/modeling_tiny\.py"):
        safeloader.DiffusionPipeline.from_pretrained(pipeline_dir)
    assert not marker.exists()


def test_install_runs_diffusers_automodel_code_in_the_worker(
    tmp_path: Path, tiny_sd_dir: Path, reference: dict[str, Any]
) -> None:
    import diffusers

    marker = tmp_path / "sandboxed-marker"
    pipeline_dir = build_pipeline_with_remote_text_encoder(tmp_path / "pipe", tiny_sd_dir, marker)
    safeloader.install(policy="default")
    try:
        with pytest.raises(RemoteCodeNotTrusted, match=r"safeloader\.AutoModel\.from_pretrained"):
            diffusers.AutoModel.from_pretrained(pipeline_dir, subfolder="text_encoder")
        text_encoder = diffusers.AutoModel.from_pretrained(
            pipeline_dir, subfolder="text_encoder", trust_remote_code=True
        )
        try:
            assert type(text_encoder).__name__ == "RemoteModel"
            # The same weights and code as the in-process reference model: identical output for the same seed.
            hidden = text_encoder(IDS, generator=torch.Generator().manual_seed(0)).last_hidden_state
            np.testing.assert_array_equal(hidden.numpy(), reference["hidden"].numpy())
        finally:
            text_encoder.close()
    finally:
        safeloader.uninstall()
    assert not marker.exists(), "repository code ran in the caller"


def test_hub_repo_follows_sources_and_pins(loopback_hub: Any, remote_dirs: dict[str, Path]) -> None:
    sha = loopback_hub.create_repo("someone/tiny-remote", _files(remote_dirs["model"]))
    denied = with_overrides(load_policy("default"), sources={"deny": ("someone/*",)})
    with pytest.raises(SourceDenied):
        sandboxed.AutoModel.from_pretrained("someone/tiny-remote", trust_remote_code=True, policy=denied)
    pinned_only = with_overrides(load_policy("default"), sources={"require_pinned_revision": True})
    with pytest.raises(UnpinnedRevisionError, match=sha):
        sandboxed.AutoModel.from_pretrained("someone/tiny-remote", trust_remote_code=True, policy=pinned_only)
    with pytest.raises(SignatureRequiredError):
        sandboxed.AutoModel.from_pretrained(
            "someone/tiny-remote", revision=sha, trust_remote_code=True, policy="strict"
        )
    model = sandboxed.AutoModel.from_pretrained(
        "someone/tiny-remote", revision=sha, trust_remote_code=True, policy=pinned_only
    )
    try:
        assert model.safeloader.manifest.commit == sha
        assert model(IDS).last_hidden_state.shape == (1, 6, 16)
    finally:
        model.close()
    assert not remote_dirs["marker"].exists()


def test_output_fields_that_are_not_public_names_stay_a_plain_mapping() -> None:
    """A worker answering ``__array_interface__`` as an output field gets a dict, never attribute access."""
    from safeloader.ipc import protocol
    from safeloader.ipc.codec import GenericOutput
    from safeloader.remote_models import from_data

    hostile = {protocol.OUTPUT_MARK: "BaseModelOutput", "fields": {"__array_interface__": {"data": (0, False)}}}
    decoded = from_data(hostile)
    assert not isinstance(decoded, GenericOutput)
    assert not hasattr(decoded, "__array_interface__")
    fine = from_data({protocol.OUTPUT_MARK: "BaseModelOutput", "fields": {"logits": 1}})
    assert isinstance(fine, GenericOutput) and fine.logits == 1 and fine[0] == 1
