"""The engine interface every backend implements: one async `generate(messages, sampling) -> Completion`.

Callers submit one coroutine per request and let the engine batch them (vLLM's continuous batching or a
server's); nothing here waits for a stage to finish before the next request goes in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from cai.errors import CaiError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """How to sample one completion."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    logprobs: int | None = None
    """Return this many top alternatives (with log-probabilities) at every generated position."""
    stop: tuple[str, ...] = ()
    """Strings that end the completion (not included in it)."""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    token_id: int | None = None


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    top_logprobs: list[list[TokenLogprob]] | None = None
    """Per generated position, the top alternatives, most likely first (when `Sampling.logprobs` was set)."""
    cached_tokens: int | None = None
    """Prompt tokens served from the engine's prefix cache, when the engine reports it."""


class EngineError(CaiError, RuntimeError):
    """Base class of engine failures (printed as one line by the command line, exit 1: not a bug of cai)."""

    exit_code = 1


class RequestError(EngineError):
    """This request failed (prompt too long, rejected input); other requests and the engine are fine."""


class PromptTooLongError(RequestError):
    """The prompt does not fit the model's context window."""


class EngineDeadError(EngineError):
    """The engine stopped; no further request can succeed."""


class Engine(ABC):
    """A text generator behind one async method."""

    model_id: str
    """The model as recorded in manifests and dataset cards."""
    generated_tokens: int = 0
    """Completion tokens produced so far by this engine (backends add to it), for progress displays."""

    @abstractmethod
    async def generate(self, messages: Messages, sampling: Sampling, *, continue_final: bool = False) -> Completion:
        """Complete a chat. With `continue_final`, the last (assistant) message is continued rather than answered."""

    async def response_logprob(self, messages: Messages, response: str) -> tuple[float, int]:
        """(sum of log-probabilities, token count) of the assistant's whole turn `response` after `messages`, its
        end-of-turn tokens included (a finished reply, not a prefix that could go on): one prefill, nothing
        generated. The judge's contrast score reads it."""
        raise RequestError(f"{type(self).__name__} cannot score a response's tokens (the contrast score needs vLLM "
                           "in process or a `vllm serve` server; `--no-contrast` judges without it)")

    def local_tokenizer(self) -> Any | None:
        """The model's tokenizer when this engine holds one (the in-process vLLM engine), so callers can match
        option tokens by id; None for engines behind an API (tokens are then matched by their text)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Settings worth recording in a run manifest (never secrets)."""
        return {"model": self.model_id}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
