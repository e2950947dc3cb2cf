"""The package as users install it: every import declared, pins that hold, and a wheel (built from
the sdist, as `python -m build` does) that carries every bundled preset and finds it without the
checkout. .ci/wheel_check.sh goes further: a fresh virtual environment, a restore, npe2 discovery."""
from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "napari_emdiffuse"
SETUP = configparser.ConfigParser()
SETUP.read(ROOT / "setup.cfg")
PRESETS = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "models").glob("*.yaml"))}


def _requirements(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


REQUIRED = {_name(r) for r in _requirements(SETUP["options"]["install_requires"])}
EXTRAS = {extra: {_name(r) for r in _requirements(text)} for extra, text in SETUP["options.extras_require"].items()}


def _imports() -> list[tuple[str, str, bool]]:
    """(top-level module, where, imported when the module loads) for every absolute import."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        in_function = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(n) for n in ast.walk(node) if n is not node)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            found += [(n.split(".")[0], where, id(node) not in in_function) for n in names]
    return found


# Modules that exist for one optional extra: they import it at their top, and nothing in the
# package imports them when it loads (checked below), so the package works without the extra.
OPTIONAL_MODULES = {"napari_emdiffuse/streaming/cluster.py": "distributed",
                    "napari_emdiffuse/interchange/bioimageio_export.py": "bioimageio"}


def _module_imported_at_load(dotted: str) -> list[str]:
    """Where the package imports ``dotted`` (relatively or absolutely) when a module loads."""
    short = dotted.rsplit(".", 1)[-1]
    places = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith(short) or (
                    isinstance(node, ast.ImportFrom) and any(a.name == short for a in node.names)):
                places.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return places


def test_optional_modules_load_only_on_request():
    for path in OPTIONAL_MODULES:
        dotted = path[:-3].replace("/", ".")
        assert not _module_imported_at_load(dotted), f"{dotted} is imported when the package loads"


def test_every_import_is_declared():
    distributions = importlib.metadata.packages_distributions()
    undeclared, optional_at_load = [], []
    for module, where, at_load in _imports():
        if module in sys.stdlib_module_names or module in ("napari_emdiffuse", "__future__"):
            continue
        names = {_name(d) for d in distributions.get(module, [module])}
        if names & REQUIRED:
            continue
        extras = [extra for extra, declared in EXTRAS.items() if names & declared and extra != "test"]
        if not extras:
            undeclared.append(f"{module} ({where})")
        elif at_load and OPTIONAL_MODULES.get(where.split(":")[0]) not in extras:
            optional_at_load.append(f"{module} ({where}, only in extras {extras})")
    assert not undeclared, f"imported but not declared in setup.cfg: {undeclared}"
    # a package from an extra is imported where it is used, so the package works without it
    assert not optional_at_load, f"optional packages imported when a module loads: {optional_at_load}"


def test_pins_are_true():
    requires = {_name(r): r for r in _requirements(SETUP["options"]["install_requires"])}
    assert requires["torch"] == "torch>=2.5"  # torch.OutOfMemoryError, torch.amp.GradScaler(device)
    assert requires["napari"] == "napari>=0.5.1"  # units= on layers
    assert requires["zarr"] == "zarr>=3"
    assert SETUP["options"]["python_requires"] == ">=3.11"  # zarr 3 needs it
    assert not [r for r in requires.values() if "<" in r], "a ceiling needs its reason beside it"
    for extra in ("qt", "test"):
        assert "pyqt6" in EXTRAS[extra] and "pyqt5" not in EXTRAS[extra]
    assert "napari[pyqt6]>=0.5.1" in _requirements(SETUP["options.extras_require"]["all"])
    assert SETUP["metadata"]["license_expression"] == "MIT"  # License-Expression: napari hub shows it
    classifiers = _requirements(SETUP["metadata"]["classifiers"])
    assert "Framework :: napari" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
    urls = dict(line.split(" = ") for line in _requirements(SETUP["metadata"]["project_urls"]))
    assert {"Source Code", "Bug Tracker", "Documentation"} <= set(urls)


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """sdist and wheel built from a copy of the checkout (the wheel from the sdist)."""
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    out = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "-o", str(tmp / "dist"), str(source)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("*.whl")
    (sdist,) = (tmp / "dist").glob("*.tar.gz")
    return wheel, sdist


def test_wheel_and_sdist_carry_the_presets(built):
    wheel, sdist = built
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    in_sdist = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    for stem, card in PRESETS.items():
        assert f"napari_emdiffuse/_presets/models/{stem}.yaml" in in_wheel
        assert f"napari_emdiffuse/_presets/weights/{card['weights']['file']}" in in_wheel
        assert {f"models/{stem}.yaml", f"weights/{card['weights']['file']}"} <= in_sdist
    assert "napari_emdiffuse/sample_data/pair53_noisy_dwell4us.tif" in in_wheel
    assert "napari_emdiffuse/napari.yaml" in in_wheel
    # the training scripts and their data stay in the repository
    shipped = in_wheel | in_sdist
    assert not [n for n in shipped if re.search(r"(^|/)weights/.*\.py$|weights/data/|(^|/)tests/data/", n)]
    assert not [n for n in in_wheel if not n.startswith(("napari_emdiffuse/", "napari_emdiffuse-"))]


@pytest.fixture(scope="session")
def installed(built, tmp_path_factory):
    """The wheel installed into a folder of its own (no checkout on the path)."""
    wheel, _ = built
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    return target


def _emdiffuse(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    env.pop("EMDIFFUSE_MODELS_DIR", None)
    return subprocess.run([sys.executable, "-m", "napari_emdiffuse.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_installed_wheel_lists_its_presets(installed, tmp_path):
    import os

    env = dict(os.environ, PYTHONPATH=str(installed))
    where = subprocess.run([sys.executable, "-c", "import napari_emdiffuse.loading as l; print(l.models_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == installed / "napari_emdiffuse" / "_presets" / "models"
    out = _emdiffuse(installed, tmp_path, "models")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines()[1:]]
    assert listed == list(PRESETS)


@pytest.fixture
def damaged_site(installed, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    return site


def test_corrupt_bundled_weights_say_reinstall(damaged_site, tmp_path):
    weights = damaged_site / "napari_emdiffuse" / "_presets" / "weights" / PRESETS["demo-denoise"]["weights"]["file"]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    sample = damaged_site / "napari_emdiffuse" / "sample_data" / "pair53_noisy_dwell4us.tif"
    out = _emdiffuse(damaged_site, tmp_path, "denoise", str(sample), "-o", str(tmp_path / "restored.tif"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert str(weights) in out.stderr and "reinstall napari-emdiffuse" in out.stderr
    assert not list(tmp_path.glob("restored*"))


def test_missing_bundled_weights_say_reinstall(damaged_site, tmp_path):
    weights = damaged_site / "napari_emdiffuse" / "_presets" / "weights" / PRESETS["superres-sstem"]["weights"]["file"]
    weights.unlink()
    sample = damaged_site / "napari_emdiffuse" / "sample_data" / "pair53_noisy_dwell4us.tif"
    out = _emdiffuse(damaged_site, tmp_path, "superres", str(sample), "-o", str(tmp_path / "sr.tif"),
                     "--model", "superres-sstem")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert str(weights) in out.stderr and "is missing" in out.stderr and "reinstall napari-emdiffuse" in out.stderr
