"""`git:REV[:PATH]` names a model as a commit holds it: real git, a repository made here."""
import json
import subprocess

import pytest

from feredge.models import git_models
from feredge.models.run_dir import base_run, locate_model


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _commit_model(repo, labels, seconds):
    folder = repo / "models" / "pretrained"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_bytes(b"not read by locate_model")
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "config.json").write_text(json.dumps({"arch": "edge"}))
    (folder / "history.json").write_text(json.dumps({"seconds": seconds}))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "model")
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the extraction cache lives under ~/.cache
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    monkeypatch.chdir(repo)
    return repo


def test_a_commit_gives_its_own_model_not_the_working_tree(repo):
    first = _commit_model(repo, ["a", "b"], [3600.0])
    _commit_model(repo, ["b", "c"], [1800.0, 1800.0, 1800.0])
    (repo / "models" / "pretrained" / "labels.json").write_text(json.dumps(["x", "y"]))  # uncommitted

    old, new = locate_model(f"git:{first[:7]}"), locate_model("git:HEAD")
    assert old.labels == ("a", "b") and new.labels == ("b", "c")
    assert str(old.model).startswith(str(git_models.cache_root()))
    assert base_run({"init_from": f"git:{first}"})["hours"] == pytest.approx(1.0)
    assert base_run({"init_from": "git:HEAD:models/pretrained"})["hours"] == pytest.approx(1.5)
    assert base_run({"init_from": "git:0000000"}) is None  # a commit of another clone: no record, no error


def test_a_second_lookup_uses_the_extracted_folder(repo):
    sha = _commit_model(repo, ["a", "b"], [])
    first = git_models.resolve("git:HEAD")
    assert [p.name for p in git_models.cache_root().iterdir()] == [sha]  # no staging folder left behind
    (first / "labels.json").write_text(json.dumps(["kept"]))
    assert git_models.resolve(f"git:{sha}") == first
    assert locate_model(f"git:{sha}").labels == ("kept",)


def test_plain_paths_pass_through(repo):
    assert str(git_models.resolve("runs/edge")) == "runs/edge"


@pytest.mark.parametrize("ref, message", [
    ("git:nosuchrev", "git:nosuchrev: not a commit of the git repository"),
    ("git:HEAD:models/missing", "has no models/missing"),
    ("git:", "expected git:REV or git:REV:PATH"),
])
def test_bad_references_say_what_is_wrong_in_one_line(repo, ref, message):
    _commit_model(repo, ["a", "b"], [])
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        locate_model(ref)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_start_named_by_a_file_inside_a_run_counts_that_run(tmp_path):
    run = tmp_path / "runs" / "phase-a"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "last.keras").write_bytes(b"last epoch")
    (run / "model.keras").write_bytes(b"best epoch")
    (run / "config.json").write_text(json.dumps({"arch": "edge"}))
    (run / "history.json").write_text(json.dumps({"seconds": [1800.0] * 3}))
    for start in (run / "checkpoint" / "last.keras", run / "model.keras", run):
        assert base_run({"init_from": str(start)})["hours"] == pytest.approx(1.5)
    (tmp_path / "loose.keras").write_bytes(b"no run around it")
    assert base_run({"init_from": str(tmp_path / "loose.keras")}) is None
