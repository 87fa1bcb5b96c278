"""The caller's process imports diffusers only if the script does: outputs come back as data that behaves like
diffusers' output classes, and as the classes themselves once the script has imported diffusers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline

from safeloader.ipc.codec import GenericOutput

SCRIPT = """
import json, sys
import numpy as np
import torch
{extra_import}
from safeloader import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
np.save(sys.argv[2], out.images)
print(json.dumps({{
    "type": type(out).__name__,
    "diffusers_imported": "diffusers" in sys.modules,
    "transformers_imported": "transformers" in sys.modules,
    "keys": list(out.keys()),
    "index_matches": bool(np.array_equal(out[0], out.images)),
    "tuple_length": len(out.to_tuple()),
}}))
pipe.close()
"""


def _run(tiny_model_dir: Path, tmp_path: Path, extra_import: str) -> tuple[dict[str, object], np.ndarray]:
    images = tmp_path / "images.npy"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(extra_import=extra_import), str(tiny_model_dir), str(images)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(images)


def _in_process(tiny_model_dir: Path) -> np.ndarray:
    pipe = DDPMPipeline.from_pretrained(str(tiny_model_dir))
    pipe.set_progress_bar_config(disable=True)
    output = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
    images: np.ndarray = output.images
    return images


def test_a_script_that_never_imports_diffusers_does_not_load_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    facts, images = _run(tiny_model_dir, tmp_path, "")
    assert facts == {
        "type": "GenericOutput",
        "diffusers_imported": False,
        "transformers_imported": False,
        "keys": ["images"],
        "index_matches": True,
        "tuple_length": 1,
    }
    assert np.array_equal(images, _in_process(tiny_model_dir))


def test_a_script_that_imports_diffusers_gets_its_output_class(tiny_model_dir: Path, tmp_path: Path) -> None:
    facts, images = _run(tiny_model_dir, tmp_path, "import diffusers")
    assert facts["type"] == "ImagePipelineOutput" and facts["keys"] == ["images"]
    assert np.array_equal(images, _in_process(tiny_model_dir))


def test_generic_outputs_treat_none_fields_as_diffusers_does() -> None:
    output = GenericOutput("StableDiffusionPipelineOutput", {"images": [1], "nsfw_content_detected": None})
    assert list(output) == ["images"] and output.images == [1] and output.nsfw_content_detected is None
    assert output.to_tuple() == ([1],) and output[0] == [1]
    with pytest.raises(AttributeError):
        _ = output.missing  # not a field at all


EARLY_SCRIPT = """
import json, sys, threading
import numpy as np
from safeloader import DiffusionPipeline
from safeloader.ipc.session import WorkerSession

torch_before = "torch" in sys.modules
started = WorkerSession.start.__func__
importing = []


def start_and_look(cls, *args, **kwargs):
    session = started(cls, *args, **kwargs)
    importing.append(any(thread.name == "safeloader-import-torch" for thread in threading.enumerate()))
    return session


WorkerSession.start = classmethod(start_and_look)
pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
import torch

pipe.set_progress_bar_config(disable=True)
out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
np.save(sys.argv[2], out.images)
print(json.dumps({"torch_before": torch_before, "importing_beside_worker": importing}))
pipe.close()
"""


def test_torch_is_imported_beside_the_worker_when_the_script_has_not(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A script that loads before importing torch: the caller imports torch while the worker imports its libraries
    # (the load's reply holds torch objects), and the results are those of in-process diffusers.
    images_path = tmp_path / "images.npy"
    result = subprocess.run(
        [sys.executable, "-c", EARLY_SCRIPT, str(tiny_model_dir), str(images_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts == {"torch_before": False, "importing_beside_worker": [True]}
    assert np.array_equal(np.load(images_path), _in_process(tiny_model_dir))


WAIT_SCRIPT = """
import json, sys, time
from safeloader.ipc import torch_import

torch_import.start_beside_worker()
deadline = time.monotonic() + 120
while "torch" not in sys.modules and time.monotonic() < deadline:
    time.sleep(0.0002)
half_done = bool(getattr(sys.modules["torch"].__spec__, "_initializing", False))
module = torch_import.loaded()
complete = not getattr(module.__spec__, "_initializing", False) and hasattr(module, "Generator")
torch_import.start_beside_worker()  # torch is imported now: no second thread
print(json.dumps({"half_done": half_done, "complete": complete, "threads": torch_import._pending is not None}))
"""


def test_code_asking_for_torch_waits_for_the_background_import() -> None:
    # While the import runs, sys.modules holds a half-initialised torch; the codec and RNG code must never see it.
    result = subprocess.run(
        [sys.executable, "-c", WAIT_SCRIPT], capture_output=True, text=True, check=True, timeout=300
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"half_done": True, "complete": True, "threads": False}
