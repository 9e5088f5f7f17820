"""The house rules: five layers whose imports only point down, one installed top-level name.

edge -> evaluation -> models -> export -> benchmarks: each package imports only the ones before
it (edge/cli.py names the others as strings, which is how the CLI dispatches lazily). The
evaluation layer needs no TensorFlow. Every import names feredge.*, never a bare `models`.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("edge", "evaluation", "models", "export", "benchmarks")
TENSORFLOW = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx", "nncf")


def _imports(path: Path) -> list[str]:
    """Every module an absolute import in the file names, at any depth (lazy imports count)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
            if node.module == "feredge":
                out += [f"feredge.{alias.name}" for alias in node.names]
    return out


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_imports_only_point_down(package):
    allowed = set(LAYERS[:LAYERS.index(package) + 1])
    wrong = []
    for path in _sources(package):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] in LAYERS:
                wrong.append(f"{path.relative_to(REPO)}: bare 'import {name}' (use feredge.{name})")
            elif parts[0] == "feredge" and len(parts) > 1 and parts[1] in LAYERS and parts[1] not in allowed:
                wrong.append(f"{path.relative_to(REPO)}: imports {name}, a layer above {package}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ("edge", "evaluation"))
def test_the_lower_layers_need_no_tensorflow(package):
    wrong = [f"{path.relative_to(REPO)}: {name}" for path in _sources(package) for name in _imports(path)
             if name.split(".")[0] in TENSORFLOW]
    assert not wrong, "\n".join(wrong)


def _runtime_unions(tree: ast.Module) -> list[int]:
    """Lines where `X | Y` of types is evaluated at run time, which Python 3.9 cannot do: in
    isinstance/issubclass, or in annotations of a module without `from __future__ import annotations`."""
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    exprs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "issubclass"):
            exprs += node.args[1:2]
        elif not future and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            exprs += [a.annotation for a in args if a.annotation] + [node.returns] * bool(node.returns)
        elif not future and isinstance(node, ast.AnnAssign):
            exprs.append(node.annotation)
    return sorted({e.lineno for e in exprs for x in ast.walk(e)
                   if isinstance(x, ast.BinOp) and isinstance(x.op, ast.BitOr)})


@pytest.mark.parametrize("package", ("feredge",) + LAYERS)
def test_the_code_runs_on_python_3_9(package):
    """pyproject says 3.9+ (a Jetson on JetPack 5 or an old Pi image); this machine has only 3.11."""
    wrong = []
    for path in _sources(package):
        try:
            tree = ast.parse(path.read_text(), str(path), feature_version=(3, 9))
        except SyntaxError as err:
            wrong.append(f"{path.relative_to(REPO)}:{err.lineno}: not Python 3.9 syntax ({err.msg})")
            continue
        wrong += [f"{path.relative_to(REPO)}:{line}: X | Y of types at run time" for line in _runtime_unions(tree)]
    assert not wrong, "\n".join(wrong)


def test_tests_and_ci_name_no_bare_package():
    wrong = [f"{path.relative_to(REPO)}: {name}" for path in sorted((REPO / "tests").glob("*.py"))
             for name in _imports(path) if name.split(".")[0] in LAYERS]
    assert not wrong, "\n".join(wrong)


def test_every_package_folder_is_installed_under_feredge():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"feredge": "feredge", **{f"feredge.{layer}": layer for layer in LAYERS}}
    assert config["package-dir"] == folders
    found = {"feredge"} | {
        "feredge." + ".".join(init.parent.relative_to(REPO).parts)
        for layer in LAYERS for init in (REPO / layer).rglob("__init__.py")}
    assert sorted(config["packages"]) == sorted(found)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel pip builds, from a copy of the tree (setuptools writes build/ into its source)."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source") / "feredge"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "docs", "tests"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return next(out.glob("feredge-*.whl"))


def test_the_wheel_installs_one_top_level_name(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"feredge"}
    assert "feredge/models/pretrained/bundle/manifest.json" in names  # the shipped model comes along
    missing = [f for f in _shipped_model_files() if f"feredge/{f}" not in names]
    assert not missing, f"pyproject.toml's package-data leaves out {missing}"  # every model of the family
    assert "feredge/edge/detectors/face_detection_yunet_2023mar.onnx" in names  # and the face detectors
    assert "feredge/edge/formats.py" in names and "feredge/evaluation/predict.py" in names


def test_installed_beside_a_project_with_its_own_models_package(wheel, tmp_path):
    """A user's project has models/ and export/ of its own: both it and the kit import, each its own."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    project = tmp_path / "project"
    for name in ("models", "export"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"OWNER = 'user {name}'\n")
    code = ("import models, export, feredge.models.run_dir as a, feredge.export.targets as t; "
            "from feredge.edge.bundle import Bundle; from feredge.edge.paths import DEFAULT_BUNDLE; "
            "print(models.OWNER, '|', export.OWNER, '|', a.__file__, '|', len(Bundle.load(DEFAULT_BUNDLE).artifacts))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("PYTHONSAFEPATH", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    user_models, user_export, kit_file, artifacts = [s.strip() for s in result.stdout.split("|")]
    assert (user_models, user_export) == ("user models", "user export")
    assert kit_file.startswith(str(site)) and int(artifacts) >= 1


def _shipped_model_files() -> list[str]:
    """What the repository ships under models/pretrained: git's list, or the tree without git."""
    done = subprocess.run(["git", "-C", str(REPO), "ls-files", "models/pretrained"], capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.split()
    return [str(p.relative_to(REPO)) for p in (REPO / "models" / "pretrained").rglob("*") if p.is_file()]
