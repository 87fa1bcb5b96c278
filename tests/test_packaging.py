"""safeloader installs like a library: ranges that match what is tested, a wheel that leaves torch alone.

The slow test builds the wheel and the sdist with ``python -m build``, installs the wheel into a fresh venv
that already has torch, and checks that torch is untouched, that ``safeloader doctor`` runs and reports the
library versions, and that ``safeloader demo`` runs — all from the installed wheel, not this checkout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from safeloader._compat import diffusers_internals
from safeloader._compat.versions import TESTED, dependency_facts, release
from safeloader.errors import UnsupportedDiffusersError

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[name.strip()] = version.strip()
    return found


def requirement(name: str) -> str:
    project = PYPROJECT["project"]
    candidates = [*project["dependencies"], *project["optional-dependencies"]["transformers"]]
    matches = [spec for spec in candidates if re.match(rf"{re.escape(name)}\b(?![-_\w])", spec)]
    assert len(matches) == 1, (name, matches)
    return matches[0]


# --- ranges, pins and the tested record stay in step ------------------------------------------------


def test_runtime_dependencies_are_ranges_whose_floor_is_the_oldest_tested() -> None:
    oldest = pins(ROOT / "constraints" / "oldest.txt")
    for tested in TESTED:
        spec = requirement(tested.distribution)
        assert "==" not in spec, f"{spec} pins users to one release"
        lower = re.search(r">=\s*([\w.]+)", spec)
        upper = re.search(r"<\s*([\w.]+)", spec)
        assert lower and upper, f"{spec} must be a closed range"
        assert release(lower.group(1)) == release(tested.oldest), spec
        assert release(tested.newest) < release(upper.group(1)), spec
        assert oldest[tested.distribution] == tested.oldest


def test_transformers_is_an_extra_and_a_dev_dependency() -> None:
    project = PYPROJECT["project"]
    assert not any(spec.startswith("transformers") for spec in project["dependencies"])
    assert project["optional-dependencies"]["transformers"] == [requirement("transformers")]
    assert requirement("transformers") in project["optional-dependencies"]["dev"]


def test_the_dev_constraints_pin_the_newest_tested_and_make_uses_them() -> None:
    dev = pins(ROOT / "constraints" / "dev.txt")
    assert dev == {tested.distribution: tested.newest for tested in TESTED}
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -c constraints/dev.txt -e '.[dev]'" in makefile
    assert "test-compat:" in makefile


def test_the_readme_records_the_compatibility_run_of_the_tested_versions() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Compatibility", 1)[1].split("\n## ", 1)[0]
    for tested in TESTED:
        assert f"{tested.distribution} {tested.oldest}" in section
        assert f"{tested.distribution} {tested.newest}" in section


# --- the diffusers internals ------------------------------------------------------------------------


def test_a_diffusers_older_than_supported_is_a_clear_error() -> None:
    # 0.35.0 imports a name transformers 5 removed (FLAX_WEIGHTS_NAME); 0.35.2 is the first tested to work.
    with pytest.raises(UnsupportedDiffusersError, match=r"diffusers 0\.35\.1 is older than safeloader supports"):
        diffusers_internals.check_diffusers_version("0.35.1")
    assert diffusers_internals.check_diffusers_version("0.35.2") == "0.35.2"
    assert diffusers_internals.check_diffusers_version("0.99.0.dev0") == "0.99.0.dev0"


def test_a_diffusers_whose_loader_moved_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.utils import dynamic_modules_utils

    assert diffusers_internals.dynamic_modules_utils() is dynamic_modules_utils
    monkeypatch.delattr(dynamic_modules_utils, "get_class_from_dynamic_module")
    moved = r"has no diffusers\.utils\.dynamic_modules_utils\.get_class_from_dynamic_module"
    with pytest.raises(UnsupportedDiffusersError, match=moved):
        diffusers_internals.dynamic_modules_utils()
    import safeloader

    with pytest.raises(UnsupportedDiffusersError):
        safeloader.install()
    assert not __import__("safeloader.patch").patch.installed()


def test_doctor_facts_name_each_library_and_its_tested_range() -> None:
    facts = {fact["name"]: fact for fact in dependency_facts()}
    assert set(facts) == {"torch", "diffusers", "transformers", "huggingface_hub"}
    import diffusers
    import torch

    assert facts["torch"]["version"] == torch.__version__
    assert facts["diffusers"]["version"] == diffusers.__version__
    assert facts["diffusers"]["inside_tested_range"] is True


# --- the wheel in a fresh venv ----------------------------------------------------------------------


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def torch_state(python: Path, env: dict[str, str]) -> dict[str, str]:
    probe = (
        "import json, importlib.metadata as m, pathlib, hashlib;"
        "d = m.distribution('torch'); init = pathlib.Path(d.locate_file('torch/__init__.py'));"
        "print(json.dumps({'version': d.version, 'path': str(init),"
        " 'record': hashlib.sha256(d.read_text('RECORD').encode()).hexdigest()}))"
    )
    return json.loads(run([str(python), "-c", probe], env=env).stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute alone; pip's resolver is slow on a loaded machine
def test_the_wheel_installs_beside_an_existing_torch_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # --no-isolation: the build backend (setuptools) of this venv, so the test needs no download of it.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)])
    (wheel,) = dist.glob("safeloader-*.whl")
    (sdist,) = dist.glob("safeloader-*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "safeloader/display.py" in names and "safeloader/_compat/diffusers_internals.py" in names
    assert not any(name.startswith("tests/") for name in names)
    assert "Requires-Dist: torch<3,>=2.13" in metadata
    assert 'Requires-Dist: transformers<6,>=5.0.0; extra == "transformers"' in metadata
    with tarfile.open(sdist) as archive:
        assert any(name.endswith("/pyproject.toml") for name in archive.getnames())

    # From the installed wheel only: no PYTHONPATH (pip would take this checkout for an installed safeloader),
    # and a working directory outside this checkout.
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "SAFELOADER_POLICY")}
    env["SAFELOADER_CACHE"] = str(tmp_path / "cache")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env=env)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], cwd=tmp_path, env=env)
    before = torch_state(python, env)
    run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path, env=env)
    assert torch_state(python, env) == before  # same version, same files, same place

    where = run([str(python), "-c", "import safeloader; print(safeloader.__file__)"], cwd=tmp_path, env=env)
    assert where.stdout.strip().startswith(str(venv))
    doctor = subprocess.run(
        [str(venv / "bin" / "safeloader"), "doctor", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert doctor.returncode in (0, 1), doctor.stderr  # 1: a sandbox layer this host lacks, still a report
    libraries = {fact["name"]: fact for fact in json.loads(doctor.stdout)["libraries"]}
    assert libraries["torch"]["version"] == before["version"]
    assert libraries["transformers"]["version"] is None  # an extra: not installed by the plain wheel
    demo = run([str(venv / "bin" / "safeloader"), "demo"], cwd=tmp_path, env=env)
    assert "output:   Tensor of shape (1, 3, 8, 8)" in demo.stdout
    assert torch_state(python, env) == before


def test_doctor_text_marks_libraries_outside_the_tested_range() -> None:
    from safeloader.commands.doctor import format_library_facts, library_facts

    text = format_library_facts(library_facts())
    import diffusers

    assert f"[ok ] diffusers        {diffusers.__version__}" in text
    outside = [dict(fact) for fact in library_facts()]
    outside[1].update(version="0.34.0", inside_tested_range=False, status="older than tested")
    text = format_library_facts(outside)
    assert "[!! ] diffusers        0.34.0         older than tested (0.35.2 … 0.42.1)" in text
    assert "outside the versions safeloader was tested with" in text
