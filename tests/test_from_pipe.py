"""``from_pipe`` on a sandboxed pipeline: the new pipeline is built in the same worker, after the gate.

One worker for the whole module: the source pipeline is the plain tiny DDPM; every derived pipeline must be
built in its worker, share its components (the same worker objects), and equal in-process diffusers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import safeloader
from safeloader import DiffusionPipeline
from safeloader.errors import AuditDenied, RemoteCodeNotTrusted

PIPELINES = Path(__file__).parent / "pipelines"


@pytest.fixture(scope="module")
def reference_images(tiny_model_dir: Path) -> np.ndarray:
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
    return np.asarray(out.images)


@pytest.fixture(scope="module")
def source(tiny_model_dir: Path) -> Iterator[Any]:
    pipe = DiffusionPipeline.from_pretrained(str(tiny_model_dir))
    yield pipe
    pipe.close()


MARK = """
try:
    with open({marker!r}, "a", encoding="utf-8") as handle:
        handle.write("ran\\n")
except OSError:
    pass  # inside the sandbox the marker's folder is not writable
"""


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipeline-code-ran"
    yield path
    assert not path.exists(), "the custom pipeline's code ran in the caller"


@pytest.fixture
def seeded_pipeline_dir(tmp_path: Path, marker: Path) -> Path:
    root = tmp_path / "seeded_ddpm"
    root.mkdir()
    # from_pipe hands a model component over only if the new pipeline's signature names its class.
    source = (PIPELINES / "seeded_ddpm.py").read_text()
    typed = source.replace("def __init__(self, unet, scheduler):", "def __init__(self, unet: UNet2DModel, scheduler):")
    assert typed != source
    (root / "pipeline.py").write_text("from diffusers import UNet2DModel\n" + typed + MARK.format(marker=str(marker)))
    (root / "sampling.py").write_bytes((PIPELINES / "sampling.py").read_bytes())
    return root


def _images(pipe: Any) -> np.ndarray:
    out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
    return np.asarray(out.images)


def _handle(remote: Any) -> int:
    return int(object.__getattribute__(remote, "_handle"))


def test_from_pipe_custom_pipeline_is_built_in_the_same_worker(
    source: Any, seeded_pipeline_dir: Path, reference_images: np.ndarray
) -> None:
    derived = DiffusionPipeline.from_pipe(source, custom_pipeline=str(seeded_pipeline_dir), trust_remote_code=True)
    assert derived.session is source.session
    assert type(derived).__name__ == "DerivedRemotePipeline"
    assert object.__getattribute__(derived.components["unet"], "_type_name") == "UNet2DModel"
    assert derived.safeloader.audit.verdict == "allow"
    assert set(derived.safeloader.manifest.files) == {"pipeline.py", "sampling.py"}
    # diffusers shares the modules: the worker answers the very same object for both pipelines.
    assert _handle(derived.unet) == _handle(source.unet)
    np.testing.assert_array_equal(_images(derived), reference_images)
    # The method form, and a concrete diffusers class without any foreign code.
    again = source.from_pipe(custom_pipeline=str(seeded_pipeline_dir), trust_remote_code=True)
    np.testing.assert_array_equal(_images(again), reference_images)


def test_install_routes_diffusers_from_pipe(
    source: Any, seeded_pipeline_dir: Path, reference_images: np.ndarray
) -> None:
    import diffusers

    safeloader.install(policy="default")
    try:
        derived = diffusers.DiffusionPipeline.from_pipe(
            source, custom_pipeline=str(seeded_pipeline_dir), trust_remote_code=True
        )
        assert derived.session is source.session
        np.testing.assert_array_equal(_images(derived), reference_images)
        plain = diffusers.DDPMPipeline.from_pipe(source)
        assert type(plain).__name__ == "DerivedRemotePipeline"
        np.testing.assert_array_equal(_images(plain), reference_images)
    finally:
        safeloader.uninstall()


def test_from_pipe_refuses_untrusted_and_denied_code(source: Any, seeded_pipeline_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RemoteCodeNotTrusted, match="trust_remote_code=True"):
        source.from_pipe(custom_pipeline=str(seeded_pipeline_dir))
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    (evil / "pipeline.py").write_text(f"import os\nos.system('touch {marker}')\n")
    with pytest.raises(AuditDenied):
        DiffusionPipeline.from_pipe(source, custom_pipeline=str(evil), trust_remote_code=True)
    assert not marker.exists()
    # The source pipeline is untouched and still answers.
    assert object.__getattribute__(source.components["unet"], "_type_name") == "UNet2DModel"


def test_install_routes_download_without_importing_anything(
    loopback_hub: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``DiffusionPipeline.download`` of a repo whose ``_class_name`` names its own module: gated, never imported."""
    import json

    import diffusers

    files = {p.relative_to(tiny_model_dir).as_posix(): p.read_bytes() for p in tiny_model_dir.rglob("*") if p.is_file()}
    marker = tmp_path / "ran"
    index = json.loads(files["model_index.json"])
    index["_class_name"] = ["marker_pipeline", "MarkerPipeline"]
    files["model_index.json"] = json.dumps(index).encode()
    files["marker_pipeline.py"] = (
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from diffusers import DiffusionPipeline\n\n\nclass MarkerPipeline(DiffusionPipeline):\n    pass\n"
    ).encode()
    sha = loopback_hub.create_repo("someone/code-in-repo", files)
    safeloader.install(policy="default")
    try:
        with pytest.raises(RemoteCodeNotTrusted, match=r"marker_pipeline\.py"):
            diffusers.DiffusionPipeline.download("someone/code-in-repo")
        folder = diffusers.DiffusionPipeline.download("someone/code-in-repo", revision=sha, trust_remote_code=True)
    finally:
        safeloader.uninstall()
    assert Path(folder, "marker_pipeline.py").read_bytes() == files["marker_pipeline.py"]
    assert Path(folder).name == sha
    assert not marker.exists(), "download imported repository code in the caller"
