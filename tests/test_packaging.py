"""The package installs as `ssm_tutor` with `kernels/` as the subpackage `ssm_tutor.kernels`,
never as a top-level module `kernels` (a different PyPI package owns that name)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = (
    "import importlib.util, ssm_tutor, ssm_tutor.kernels, ssm_tutor.exercises;"
    "print(ssm_tutor.kernels.__file__);"
    "print(importlib.util.find_spec('kernels'))"
)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def test_installed_package_imports_kernels_as_subpackage_from_outside_repo(tmp_path):
    # The test environment has the package installed (editable, from requirements.txt).
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert Path(out[0]).resolve() == (REPO / "kernels" / "__init__.py").resolve()
    assert out[1] == "None", "a top-level module named `kernels` must not be importable"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(REPO)], check=True, capture_output=True, text=True)
    (whl,) = dist.glob("ssm_tutor-*.whl")
    return whl


def test_wheel_maps_kernels_into_ssm_tutor(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "ssm_tutor/kernels/__init__.py" in names
    assert "ssm_tutor/exercises/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names), "kernels/ must not install as a top-level package"


def test_regular_install_imports_from_outside_repo(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, text=True)
    # Only the fresh install goes first on the path, and it runs from outside the repo.
    code = f"import sys; sys.path.insert(0, {str(target)!r}); " + PROBE
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert Path(out[0]).resolve() == (target / "ssm_tutor" / "kernels" / "__init__.py").resolve()
    assert out[1] == "None"
