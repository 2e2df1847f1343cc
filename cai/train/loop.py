"""The training loop every `cai train` task shares: accelerate for devices and precision, a deterministic
resumable batch order, checkpoints, evaluation, metrics (`metrics.py`), one optimizer-step helper.

A task supplies `loss(model, batch) -> (loss, per-example metrics, tokens)`; everything else lives here. Batches
are drawn from a seeded permutation per epoch and split across processes, so `--resume` continues exactly where a
checkpoint left off. Multi-GPU and multi-node: `accelerate launch -m cai train ...`; several CPU processes:
`accelerate launch --multi_gpu --num_processes 2 -m cai train ...` (gloo). Logged metrics are global means.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cai.runs.store import StorageError
from cai.train.config import TrainConfig
from cai.train.distributed import release_model
from cai.train.metrics import MetricLog, installed_trackers
from cai.train.modeling import enable_gradient_checkpointing

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor], int]]


def batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
            drop_last: bool = False) -> list[list[int]]:
    """This process's batches of example indices for one epoch (a seeded permutation, split by rank)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    per_step = batch_size * world
    steps = [order[i: i + per_step] for i in range(0, n, per_step)]
    if drop_last:
        steps = [step for step in steps if len(step) == per_step]
    return [step[rank * batch_size: (rank + 1) * batch_size] for step in steps if step[rank * batch_size:]]


class Trainer:
    def __init__(self, config: TrainConfig, model: torch.nn.Module, tokenizer: Any, train: list[dict],
                 collate: Callable[[list[dict]], dict[str, torch.Tensor]], loss_fn: LossFn,
                 eval_examples: list[dict] | None = None, extra_manifest: dict | None = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.out = Path(config.out)
        trackers = installed_trackers(config.report_to)
        # Accelerate keeps one state per process and refuses a second precision; a pipeline that runs several
        # trainers in one process (SFT, then DPO in bf16) starts each from a clean state. The process group stays.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        self.accelerator = Accelerator(cpu=_distributed_without_accelerator(),
                                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                                       mixed_precision="bf16" if config.bf16 else "no",
                                       log_with=trackers or None, project_dir=str(self.out))
        set_seed(config.seed)
        self.tokenizer = tokenizer
        self.train_examples = train
        self.eval_examples = eval_examples or []
        self.collate = collate
        self.loss_fn = loss_fn
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        world = self.accelerator.num_processes
        self.batches_per_epoch = len(batches(len(train), self.draw_size(), config.seed, 0,
                                             self.accelerator.process_index, world, self.drop_last))
        steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / self.draws_per_step()))
        self.total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
        from transformers import get_scheduler

        updates = self.total_steps * self.updates_per_step()
        scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * updates),
                                  num_training_steps=updates)
        # The scheduler stays unprepared: it steps once per optimizer step here, on every process alike.
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = MetricLog(self.out / "metrics.jsonl", self.accelerator)
        if trackers:
            self.accelerator.init_trackers("cai", config=config.model_dump(mode="json"))
        from cai.train.outputs import train_fields

        self.manifest = {**train_fields(config), "config": config.model_dump(mode="json"), "examples": len(train),
                         "eval_examples": len(self.eval_examples), "total_steps": self.total_steps,
                         "processes": world, **(extra_manifest or {})}

    # --- what a task may change ---------------------------------------------------------------------------------
    drop_last = False
    """Skip an epoch's last, smaller draw (tasks whose steps need full draws)."""

    def draw_size(self) -> int:
        """Examples drawn from the data at a time."""
        return self.config.batch_size

    def draws_per_step(self) -> int:
        """Draws per logged step (a step here is one optimizer update: the accumulated micro-batches)."""
        return self.config.gradient_accumulation_steps

    def updates_per_step(self) -> int:
        """Optimizer updates (scheduler steps) per step."""
        return 1

    def extra_state(self) -> dict[str, Any]:
        """Task state that checkpoints carry beyond model, optimizer, scheduler and RNG."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # --- checkpoints -------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        folder = self.out / "checkpoints"
        found = [p for p in folder.glob("step-*") if (p / "trainer_state.json").is_file()] if folder.exists() else []
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def save_checkpoint(self) -> None:
        folder = self.out / "checkpoints" / f"step-{self.step}"
        partial = folder.with_name(folder.name + ".partial")
        try:
            self.accelerator.save_state(str(partial))
            # every process writes its own RNG state into the folder: only once all have may it be renamed
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                state = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         **self.extra_state()}
                (partial / "trainer_state.json").write_text(json.dumps(state))
                shutil.rmtree(folder, ignore_errors=True)
                partial.rename(folder)  # a checkpoint is whole or absent
                if self.config.save_total_limit:
                    for old in self.checkpoints()[: -self.config.save_total_limit]:
                        shutil.rmtree(old, ignore_errors=True)
        except Exception as e:  # OSError, or safetensors' own error wrapping one
            shutil.rmtree(partial, ignore_errors=True)
            earlier = [p.name for p in self.checkpoints()]
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise StorageError(getattr(e, "errno", None), f"cannot write checkpoint {folder}: {reason}; "
                               f"{'the earlier checkpoints ' + ', '.join(earlier) + ' are intact' if earlier else 'no earlier checkpoint'}"
                               f" and metrics.jsonl keeps the logged steps; free space, then rerun with --resume") from e
        self.accelerator.wait_for_everyone()

    def resume(self) -> bool:
        found = self.checkpoints()
        if not found:
            return False
        self.accelerator.load_state(str(found[-1]))
        state = json.loads((found[-1] / "trainer_state.json").read_text())
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.load_extra_state(state)
        if self.accelerator.is_main_process:
            self.log.truncate_after(self.step)
        self.accelerator.print(f"cai: resumed from {found[-1]} (step {self.step})")
        return True

    # --- the loop ----------------------------------------------------------------------------------------------
    def _epoch_batches(self) -> Iterator[list[int]]:
        while True:
            order = batches(len(self.train_examples), self.draw_size(), self.config.seed, self.epoch,
                            self.accelerator.process_index, self.accelerator.num_processes, self.drop_last)
            for i in range(self.batch_in_epoch, len(order)):
                self.batch_in_epoch = i + 1
                yield order[i]
            self.epoch += 1
            self.batch_in_epoch = 0

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def start(self) -> Any:
        """Resume or start afresh, write the manifest; returns a progress bar or None."""
        config = self.config
        if not (config.resume and self.resume()) and self.accelerator.is_main_process:
            self.log.truncate_after(-1)  # a fresh start: no rows from an earlier run in this folder
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)  # nor its checkpoints, for a later --resume
        if self.accelerator.is_main_process:
            (self.out / "train_manifest.json").write_text(json.dumps(self.manifest, indent=2, default=str))
        if config.progress and self.accelerator.is_local_main_process:
            from tqdm import tqdm

            return tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True)
        return None

    def train(self) -> dict[str, float]:
        config = self.config
        bar = self.start()
        window: dict[str, list[float]] = {}
        tokens, started, last = 0, time.monotonic(), {}
        source = self._epoch_batches()
        self.model.train()
        while self.step < self.total_steps:
            for _ in range(config.gradient_accumulation_steps):
                indices = next(source)
                batch = self._to_device(self.collate([self.train_examples[i] for i in indices]))
                with self.accelerator.accumulate(self.model), self.accelerator.autocast():
                    loss, metrics, n_tokens = self.loss_fn(self.model, batch)
                    grad_norm = self.backward_and_step(loss)
                if grad_norm is not None:
                    window.setdefault("grad_norm", []).append(grad_norm)
                window.setdefault("loss", []).append(float(loss.detach()))
                for name, values in metrics.items():
                    window.setdefault(name, []).append(float(values.float().mean()))
                tokens += n_tokens
            self.step += 1
            if self.step % config.logging_steps == 0 or self.step == self.total_steps:
                elapsed = time.monotonic() - started
                last = self.global_mean({name: sum(v) / len(v) for name, v in window.items()})
                all_tokens = int(self.global_mean({"tokens": tokens})["tokens"] * self.accelerator.num_processes)
                last.update({"learning_rate": self.scheduler.get_last_lr()[0], "epoch": self.epoch,
                             "tokens": all_tokens, "tokens_per_s": all_tokens / max(elapsed, 1e-9)})
                self.log.write(self.step, last)
                window = {}
                if bar is not None:
                    bar.set_postfix_str(f"loss {last['loss']:.4f}, {last['tokens_per_s']:.0f} tok/s")
            self.end_of_step(bar)
        return self.finish(bar, last)

    def backward_and_step(self, loss: torch.Tensor) -> float | None:
        """Backward; at the end of an accumulation also clip, step, schedule and zero. Call it inside
        `accelerator.accumulate(model)`. Returns the gradient norm when the optimizer stepped."""
        self.accelerator.backward(loss)
        norm = None
        if self.accelerator.sync_gradients:
            norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm))
        self.optimizer.step()
        if self.accelerator.sync_gradients:
            self.scheduler.step()
        self.optimizer.zero_grad()
        return norm

    def global_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes (every process calls this at the same step), so what is logged
        describes the whole global batch, not rank 0's share of it."""
        if self.accelerator.num_processes == 1 or not values:
            return values
        names = sorted(values)
        local = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=self.accelerator.device)
        reduced = self.accelerator.reduce(local, reduction="mean")
        return dict(zip(names, reduced.tolist(), strict=True))

    def end_of_step(self, bar: Any) -> None:
        """Progress, then the periodic evaluation and checkpoint (none at the last step: `finish` follows)."""
        config = self.config
        if bar is not None:
            bar.update(1)
        if self.step >= self.total_steps:
            return
        if config.eval_steps and self.eval_examples and self.step % config.eval_steps == 0:
            self.log.write(self.step, self.evaluate())
        if config.save_steps and self.step % config.save_steps == 0:
            self.save_checkpoint()

    def finish(self, bar: Any, last: dict[str, float]) -> dict[str, float]:
        """The final evaluation and model; returns the last logged metrics with the final evaluation."""
        if bar is not None:
            bar.close()
        if self.eval_examples:
            final_eval = self.evaluate()
            self.log.write(self.step, final_eval)
            last.update(final_eval)
        self.release_optimizer()
        self.save_final()
        self.model = release_model(self.accelerator, self.model)
        return last

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss and metrics, in eval mode (no dropout) and in the training precision (autocast, so a
        reference and its policy are compared in the same arithmetic); the model's mode is restored after."""
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, float] = {}
        count = 0
        for start in range(0, len(self.eval_examples), self.config.batch_size):
            chunk = self.eval_examples[start: start + self.config.batch_size]
            with self.accelerator.autocast():
                loss, metrics, _ = self.loss_fn(self.model, self._to_device(self.collate(chunk)))
            sums["eval/loss"] = sums.get("eval/loss", 0.0) + float(loss) * len(chunk)
            for name, values in metrics.items():
                sums[f"eval/{name}"] = sums.get(f"eval/{name}", 0.0) + float(values.float().sum())
            count += len(chunk)
        self.model.train(was_training)
        return {name: value / count for name, value in sums.items()}

    def release_optimizer(self) -> None:
        """Drop the optimizer's moments (two copies of the trained weights) before the final save: safetensors
        serialises a shard in memory, and without this the save, not training, would set the run's peak."""
        self.optimizer.zero_grad(set_to_none=True)
        getattr(self.optimizer, "optimizer", self.optimizer).state.clear()

    def save_final(self) -> None:
        self.accelerator.wait_for_everyone()
        model = self.accelerator.unwrap_model(self.model)
        if self.accelerator.is_main_process:
            if self.config.lora and self.config.merge_lora:
                import copy

                model = copy.deepcopy(model).merge_and_unload()  # a copy: the trained adapter stays usable
            model.save_pretrained(self.out, safe_serialization=True)
            self.tokenizer.save_pretrained(self.out)
        self.accelerator.wait_for_everyone()


def _distributed_without_accelerator() -> bool:
    """Several processes (WORLD_SIZE > 1) on a machine with no GPU: accelerate needs `cpu=True` to join them
    over gloo (otherwise each process silently trains alone on its share of every batch)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    xpu = getattr(torch, "xpu", None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available())
                or torch.backends.mps.is_available())


def pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], dtype=torch.long)
