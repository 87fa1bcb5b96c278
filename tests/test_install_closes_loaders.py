"""Under ``safeloader.install()`` no path of diffusers or transformers imports repository code in the caller.

Each repository file writes a marker when it runs. A separate Python process (stdin full of "y", so
transformers' "Do you wish to run the custom code? [y/N]" prompt would say yes) tries every known path; every
one must end in a refusal naming the call and the safeloader route, and no marker may appear. A control run
without ``install()`` shows the same "y" does run the code — so the probe can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import safeloader
from safeloader.errors import RemoteCodeNotTrusted
from tests.fixtures.remote_code import build_pipeline_with_remote_text_encoder, build_remote_code_model

PROBE = Path(__file__).parent / "install_probe.py"
REPO_ROOT = Path(__file__).resolve().parent.parent

EVIL_MODULE = """
with open({marker!r}, "a", encoding="utf-8") as handle:
    handle.write("evil_mod\\n")
"""


def _single_file_config(root: Path, marker: Path) -> tuple[Path, Path]:
    """A checkpoint and a config folder whose model_index.json names a module that sits next to it."""
    import torch
    from safetensors.torch import save_file

    folder = root / "config_folder"
    folder.mkdir()
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1", "unet": ["evil_mod", "Evil"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "evil_mod.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    checkpoint = root / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(checkpoint))
    return checkpoint, folder


def _run_probe(paths: dict[str, str], tmp_path: Path, *, cwd: Path) -> dict[str, Any]:
    spec = tmp_path / "paths.json"
    spec.write_text(json.dumps(paths))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    # ``-c`` puts the working directory (the config folder) first on sys.path, as a user running there would.
    code = (
        f"import runpy, sys; sys.argv = ['probe', {str(spec)!r}]; runpy.run_path({str(PROBE)!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input="y\n" * 50, capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_no_path_runs_repository_code_in_the_caller_even_when_stdin_says_yes(tmp_path: Path, tiny_sd_dir: Path) -> None:
    marker = tmp_path / "repository-code-ran"
    model = build_remote_code_model(tmp_path / "model", marker)
    pipeline = build_pipeline_with_remote_text_encoder(tmp_path / "pipeline", tiny_sd_dir, marker)
    checkpoint, config_folder = _single_file_config(tmp_path, marker)
    paths = {
        "model": str(model),
        "pipeline": str(pipeline),
        "checkpoint": str(checkpoint),
        "config_folder": str(config_folder),
    }
    results = _run_probe(paths, tmp_path, cwd=config_folder)
    assert not marker.exists(), f"repository code ran in the caller: {marker.read_text()}"
    report = results.pop("report")["message"]
    assert "transformers' dynamic-module loader and its trust_remote_code prompt" in report
    assert "diffusers' dynamic-module loader" in report
    expected_routes = {
        "diffusers_automodel": ("diffusers.AutoModel.from_pretrained", "safeloader.AutoModel.from_pretrained"),
        "transformers_prompted": ("transformers.AutoModel.from_pretrained", "safeloader.transformers.AutoModel"),
        "transformers_trusted": ("transformers.AutoModel.from_pretrained", "safeloader.transformers.AutoModel"),
        "config_trusted": ("transformers.AutoConfig.from_pretrained", "safeloader.transformers.AutoConfig"),
        "tokenizer_trusted": ("transformers.AutoTokenizer.from_pretrained", "safeloader.transformers.AutoTokenizer"),
        "transformers_pipeline": ("transformers.pipeline", "safeloader.transformers.pipeline"),
        "modular_load_components": ("load_components", "safeloader."),
        "single_file_config": ("from_single_file", "'evil_mod'"),
    }
    assert set(results) == set(expected_routes)
    for name, (call, route) in expected_routes.items():
        outcome = results[name]
        assert outcome["type"] == "RemoteCodeNotTrusted", (name, outcome)
        assert call in outcome["message"] and route in outcome["message"], (name, outcome["message"])


def test_without_install_the_same_prompt_answer_runs_the_code(tmp_path: Path) -> None:
    """The control: transformers' prompt with "y" on stdin imports the repository code in the caller."""
    marker = tmp_path / "control-ran"
    model = build_remote_code_model(tmp_path / "model", marker, tokenizer=False)
    code = f"import transformers; transformers.AutoModel.from_pretrained({str(model)!r})"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", code], input="y\n" * 10, capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "modeling_tiny" in marker.read_text()


def test_install_closes_transformers_in_this_process_and_uninstall_restores_it(tmp_path: Path) -> None:
    import transformers
    from transformers import dynamic_module_utils
    from transformers.models.auto import auto_factory

    original = dynamic_module_utils.get_class_from_dynamic_module
    original_resolve = auto_factory.resolve_trust_remote_code
    marker = tmp_path / "ran"
    model = build_remote_code_model(tmp_path / "model", marker, tokenizer=False)
    report = safeloader.install(policy="default")
    try:
        assert auto_factory.get_class_from_dynamic_module is not original
        with pytest.raises(RemoteCodeNotTrusted, match=r"transformers\.AutoModelForCausalLM\.from_pretrained"):
            transformers.AutoModelForCausalLM.from_pretrained(model, trust_remote_code=True)
        assert "refused in this process" in report.format_text()
    finally:
        safeloader.uninstall()
    assert not marker.exists()
    assert dynamic_module_utils.get_class_from_dynamic_module is original
    assert auto_factory.get_class_from_dynamic_module is original
    assert auto_factory.resolve_trust_remote_code is original_resolve
