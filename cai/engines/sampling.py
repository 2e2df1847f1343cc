"""What training asks of an inference engine: tokenized prompts in, the sampled token ids out, and the policy's
new weights loaded in place between updates (PPO's `--rollouts vllm`, online DPO's rounds).

    engine = create_sampling_engine(config)     # cai.engines: the in-process vLLM engine
    ids = await engine.generate_ids(prompt_ids, TokenSampling(max_tokens=64, temperature=0.7, seed=3, stop_ids=(2,)))
    await engine.load_weights("scratch/step-3") # a checkpoint folder of the same architecture

Sampling here is plain softmax(logits / temperature) over the whole vocabulary (optionally top-p), which is what
the trainers' log-probabilities describe; a server behind the OpenAI API cannot take new weights from the trainer,
so only the vLLM backend is a sampling engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TokenSampling:
    """How to sample one response as token ids."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    """The request's own seed: the same (weights, prompt, seed) gives the same draw."""
    stop_ids: tuple[int, ...] = ()
    """Token ids that end the response (kept in it)."""


class SamplingEngine(Protocol):
    generated_tokens: int

    async def generate_ids(self, prompt_ids: list[int], sampling: TokenSampling) -> list[int]:
        """The sampled token ids of one response to a tokenized prompt."""
        ...

    async def load_weights(self, path: str) -> None:
        """Serve the weights of the checkpoint folder `path` from now on."""
        ...

    async def close(self) -> None: ...
