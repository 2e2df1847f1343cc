"""Rollouts for PPO: sample one response per prompt from the current policy.

`RolloutGenerator` is the seam. `TransformersRollouts` samples with `model.generate` on the training process,
which is right on a CPU and for small models. A vLLM generator would implement the same two methods: `generate`
on a vLLM engine, and `sync_weights` pushing the policy's new weights into it after each PPO iteration (for
example `llm.collective_rpc` / `model.load_weights(state_dict.items())` with LoRA merged first), the design TRL
and OpenRLHF use for their vLLM rollouts.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from cai.train.data import DataError, fit_prompt
from cai.train.loop import pad


class RolloutGenerator(Protocol):
    def generate(self, prompt_ids: list[list[int]], seeds: list[int] | None = None) -> list[list[int]]:
        """Response token ids for each prompt, ending with an end-of-turn token unless cut by max_new_tokens;
        with `seeds`, each prompt's draw is fixed by its own seed (the same draws every time)."""
        ...

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Make the generator sample from `policy` as it is now (a no-op when it samples from policy itself)."""
        ...


def end_ids(tokenizer: Any, model: torch.nn.Module) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def cut_at_end(tokens: list[int], stop: set[int]) -> list[int]:
    """Tokens up to and including the first end token."""
    for i, token in enumerate(tokens):
        if token in stop:
            return tokens[: i + 1]
    return tokens


def left_pad(sequences: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[value] * (width - len(s)) + s for s in sequences], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long)
    return ids, mask


class Rollouts:
    """What every rollout generator holds: the tokenizer, how to sample, and the ids that end a response."""

    def __init__(self, tokenizer: Any, max_new_tokens: int, temperature: float, top_p: float, stop: set[int]):
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.stop = stop


class TransformersRollouts(Rollouts):
    """Sampling with `generate` on the policy itself (so `sync_weights` has nothing to do)."""

    def __init__(self, policy: torch.nn.Module, tokenizer: Any, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, batch_size: int | None = None, seeded: bool = False):
        super().__init__(tokenizer, max_new_tokens, temperature, top_p, end_ids(tokenizer, policy))
        self.policy = policy
        self.batch_size = batch_size
        self.seeded = seeded
        """With `seeds`, each response's draw comes from a generator seeded with its own seed (the same draw
        whichever process or batch it falls in; `GumbelPerRow`); otherwise one draw from torch's generator."""

    def sync_weights(self, policy: torch.nn.Module) -> None:
        self.policy = policy

    def sampling_config(self) -> Any:
        """Exactly what PPO's log-probabilities account for: softmax(logits / T) over the whole vocabulary."""
        from transformers import GenerationConfig

        return GenerationConfig(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0,
                                max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                eos_token_id=sorted(self.stop))

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], seeds: list[int] | None = None) -> list[list[int]]:
        """`model.generate` draws from torch's global generator: fixed draws come from the caller seeding it
        (PPO's evaluation forks and seeds it), or, for a `seeded` sampler, from each response's own seed."""
        if self.seeded and seeds is not None:
            if len(seeds) != len(prompt_ids):
                raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts")
            return self._generate(prompt_ids, seeds)
        return self._generate(prompt_ids)

    def _generate(self, prompt_ids: list[list[int]], seeds: list[int] | None = None) -> list[list[int]]:
        was_training = self.policy.training
        self.policy.eval()
        device = next(self.policy.parameters()).device
        # transformers fills a passed config's unset fields from the model's own generation_config (a checkpoint's
        # repetition_penalty, top_k, suppress_tokens ...), which would sample from another distribution than
        # the one PPO scores: the model's config is swapped for a fresh one while sampling.
        model = hf_model(self.policy)
        config = self.sampling_config() if seeds is None else self.seeded_config()
        saved, model.generation_config = model.generation_config, config
        out: list[list[int]] = []
        step = self.batch_size or len(prompt_ids)
        try:
            for start in range(0, len(prompt_ids), step):
                ids, mask = left_pad(prompt_ids[start: start + step], self.tokenizer.pad_token_id)
                extra = {} if seeds is None else {"logits_processor": self.seeded_processors(
                    seeds[start: start + step], device)}
                generated = self.policy.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                                 generation_config=config, **extra)
                out += [cut_at_end(row[ids.shape[1]:].tolist(), self.stop) for row in generated]
        finally:
            model.generation_config = saved
            self.policy.train(was_training)
        return out

    def seeded_config(self) -> Any:
        """The batched, per-response-seeded draw: `generate` takes the argmax of what `seeded_processors` leave,
        which is a sample of softmax(logits / T) after top-p (the Gumbel-max trick), PPO's distribution."""
        from transformers import GenerationConfig

        return GenerationConfig(do_sample=False, max_new_tokens=self.max_new_tokens,
                                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.stop))

    def seeded_processors(self, seeds: list[int], device: torch.device) -> Any:
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        if self.temperature <= 0:
            return LogitsProcessorList()  # greedy: nothing to draw
        warpers = [TemperatureLogitsWarper(self.temperature)]
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return LogitsProcessorList([*warpers, GumbelPerRow(seeds, device)])


class GumbelPerRow:
    """Adds Gumbel noise drawn from each row's own generator, seeded with that row's seed: the argmax is then a
    draw from softmax(scores), and a row's draw depends on its seed alone, not on the batch it shares (one row
    alone, or eight, or split over processes, give the same tokens up to float noise in the logits). Sampling a
    batch in one `generate` this way is several times faster on a CPU than drawing each response alone."""

    def __init__(self, seeds: list[int], device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows for {len(self.generators)} seeds")
        tiny = torch.finfo(torch.float32).tiny
        uniform = torch.stack([torch.rand(scores.shape[1], generator=g, device=scores.device)
                               for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny)))
        return scores.float() + gumbel


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP and peft wrappers (the one whose generation_config `generate` reads)."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def response_texts(tokenizer: Any, responses: list[list[int]]) -> list[str]:
    """The sampled responses as text, from exactly their own tokens (never the padded batch, whose pad
    positions would decode as some vocabulary entry)."""
    return [tokenizer.decode(r, skip_special_tokens=True) for r in responses]


def rollout_batch(prompt_ids: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts then right-padded responses: input_ids, attention_mask, position_ids (counting real
    tokens only, as generation saw them) and the response mask; `context` is the padded prompt width."""
    prompts, prompt_mask = left_pad(prompt_ids, pad_id)
    response_ids = pad(responses, pad_id)
    response_mask = pad([[1] * len(r) for r in responses], 0)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return {
        "input_ids": torch.cat([prompts, response_ids], dim=1),
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "response_ids": response_ids,
        "response_mask": response_mask.float(),
        "context": torch.tensor(prompts.shape[1]),
    }


def load_prompt_examples(source: str, tokenizer: Any, limit: int | None, max_prompt_length: int) -> list[dict]:
    from cai.inputs import InputProblem, load_prompts

    items = load_prompts(source, limit=limit)
    problems = [item for item in items if isinstance(item, InputProblem)]
    for problem in problems[:5]:
        print(f"cai: skipping prompt {problem.id}: {problem.reason}")
    examples = []
    for item in items:
        if not isinstance(item, InputProblem):
            # the reward model later scores these (cut) messages: the prompt the policy actually saw
            messages, prompt_ids = fit_prompt(tokenizer, item.messages, max_prompt_length)
            examples.append({"id": item.id, "messages": messages, "prompt_ids": prompt_ids})
    if not examples:
        raise DataError(f"{source}: no usable prompts ({len(problems)} problem rows)")
    return examples


class OnPolicySteps:
    """A sampling trainer's step (PPO, GRPO): one draw of prompts, then `ppo_epochs` passes over its rollouts in
    minibatches of batch_size x accumulation, each minibatch one optimizer update. Mixed in before `Trainer`."""

    config: Any

    def draws_per_step(self) -> int:
        return 1

    def updates_per_step(self) -> int:
        minibatch = self.config.batch_size * self.config.gradient_accumulation_steps
        return self.config.ppo_epochs * (self.config.rollout_batch_size // minibatch)
