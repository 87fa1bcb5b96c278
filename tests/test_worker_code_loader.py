"""The worker's code loader, class routing and audit recorder, exercised in-process (no worker needed)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeloader.worker.audit_hook import EventRecorder
from safeloader.worker.code_loader import CodeRefused, VerifiedPackage
from safeloader.worker.dynamic_modules import VerifiedClassLoader, defined_pipeline_class

PIPELINE = b"""\
from diffusers import DiffusionPipeline

from .utils.helpers import VALUE, HelperPipeline


class OnlyPipeline(DiffusionPipeline):
    value = VALUE
"""
HELPERS = b"""\
from diffusers import DiffusionPipeline

VALUE = 42


class HelperPipeline(DiffusionPipeline):
    pass
"""


def hashed(code: dict[str, bytes]) -> dict[str, str]:
    return {relpath: hashlib.sha256(data).hexdigest() for relpath, data in code.items()}


@pytest.fixture
def package() -> Iterator[VerifiedPackage]:
    code = {"pipeline.py": PIPELINE, "utils/helpers.py": HELPERS, "README.md": b"not code"}
    verified = VerifiedPackage(code, hashed(code), label="test label")
    yield verified
    sys.meta_path.remove(verified)
    for name in [name for name in sys.modules if name.startswith(verified.name)]:
        del sys.modules[name]


def test_files_become_a_package_with_working_relative_imports(package: VerifiedPackage) -> None:
    module = package.import_relpath("pipeline.py")
    assert module.__name__ == f"{package.name}.pipeline" and package.name.startswith("safeloader_test_label_")
    assert module.OnlyPipeline.value == 42
    assert module.__file__.startswith("/safeloader-verified/") and not Path(module.__file__).exists()
    assert defined_pipeline_class(module) is module.OnlyPipeline


def test_hash_mismatch_missing_hash_and_traversal_are_refused() -> None:
    code = {"pipeline.py": PIPELINE}
    with pytest.raises(CodeRefused, match="sha256"):
        VerifiedPackage(code, {"pipeline.py": "0" * 64}, label="x")
    with pytest.raises(CodeRefused, match="same files"):
        VerifiedPackage(code, {}, label="x")
    bad = {"../evil.py": b""}
    with pytest.raises(CodeRefused, match="relative path"):
        VerifiedPackage(bad, hashed(bad), label="x")
    assert not any(
        isinstance(finder, VerifiedPackage) and finder.name.startswith("safeloader_x_") for finder in sys.meta_path
    )


def test_class_routing_only_returns_verified_classes(package: VerifiedPackage, tmp_path: Path) -> None:
    loader = VerifiedClassLoader(package, tmp_path)
    assert loader(str(tmp_path), "pipeline.py").__name__ == "OnlyPipeline"
    assert loader("org/repo", "pipeline.py", class_name="HelperPipeline").__name__ == "HelperPipeline"
    with pytest.raises(CodeRefused, match="defines no class"):
        loader(str(tmp_path / "utils"), "helpers.py", class_name="VALUE")
    with pytest.raises(CodeRefused, match="not among the verified"):
        loader(str(tmp_path / "unet"), "my_unet.py", class_name="MyUNet")
    assert loader.candidates(str(tmp_path / "unet"), "my_unet.py", None) == ["unet/my_unet.py", "my_unet.py"]


def test_recorder_keeps_opens_outside_allowed_roots_and_watched_events(tmp_path: Path) -> None:
    code_root = "/safeloader-verified/remote-test"
    recorder = EventRecorder([str(tmp_path / "model")], [str(tmp_path / "tmp")], code_root)
    # Events raised from a frame of the verified code are the pipeline's; the rest are its libraries'.
    namespace: dict[str, object] = {}
    exec(
        compile("def fire(hook, event, args):\n    hook(event, args)\n", f"{code_root}/pipeline.py", "exec"), namespace
    )
    fire = namespace["fire"]
    recorder("open", (str(tmp_path / "model" / "weights.bin"), "rb", 0))
    recorder("open", (str(tmp_path / "tmp" / "scratch"), "w", 1))
    recorder("open", (str(tmp_path / "model" / "weights.bin"), "w", 1))
    fire(recorder, "open", ("/root/.ssh/id_rsa", "r", 0))  # type: ignore[operator]
    recorder("socket.__new__", (None, 2, 1, 0))
    recorder("socket.__new__", (None, 2, 1, 0))
    recorder("import", ("json", None, [], [], []))
    recorder("import", ("multiprocessing.synchronize", None, [], [], []))  # a library's own lazy import
    fire(recorder, "import", ("ctypes.util", None, [], [], []))  # type: ignore[operator]
    events = recorder.take()
    assert [event["event"] for event in events] == ["open", "open", "socket.__new__", "import"]
    assert [event["by"] for event in events] == ["library", "pipeline", "library", "pipeline"]
    assert "weights.bin (write)" in events[0]["detail"] and "/root/.ssh/id_rsa (read)" in events[1]["detail"]
    assert recorder.take() == []
