"""The bundled trainer on the real default model (CPU, short sequences, a few steps): DPO moves the rewards,
soft labels at 0.5 give no gradient, SFT lowers its loss, LoRA, resume after SIGKILL, and the saved model runs
in vLLM."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cai.resources import data_dir
from cai.train.config import DPOConfig, TrainConfig
from cai.train.data import DataError
from cai.train.dpo import collate_pairs, prepare_dpo
from cai.train.sft import prepare_sft
from tests.conftest import TEST_ENGINE, kill_when, limited_file_size
from tests.processes import run as run_command

pytestmark = pytest.mark.model

SHORT = {"max_length": 96, "max_prompt_length": 32, "progress": False}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """Eight preference pairs from the shipped labelled set, with soft labels."""
    rows = [json.loads(line) for line in (data_dir("prompts") / "judge-eval.jsonl").read_text().splitlines()[:8]]
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({**row, "p_chosen": 0.9 if i % 2 else 0.7}) + "\n")
    return path


@pytest.fixture(scope="module")
def sft_file(pairs_file):
    path = pairs_file.with_name("sft.jsonl")
    with open(path, "w") as f:
        for line in pairs_file.read_text().splitlines():
            row = json.loads(line)
            f.write(json.dumps({"messages": row["prompt"] + row["chosen"]}) + "\n")
    return path


def evaluate_pairs(trainer):
    return trainer.evaluate()


def test_dpo_steps_raise_accuracy_and_margins_on_their_pairs(pairs_file, tmp_path):
    config = DPOConfig(data=str(pairs_file), out=str(tmp_path / "dpo"), batch_size=4, max_steps=6,
                         learning_rate=5e-5, beta=0.1, **SHORT)
    trainer = prepare_dpo(config)
    trainer.eval_examples = trainer.train_examples
    before = trainer.evaluate()
    assert before["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-3)  # policy == reference at the start
    final = trainer.train()
    after = trainer.evaluate()
    assert after["eval/rewards/margins"] > before["eval/rewards/margins"] + 0.05
    assert after["eval/rewards/accuracies"] >= 0.75 > before["eval/rewards/accuracies"]
    assert after["eval/loss"] < before["eval/loss"]
    log = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in log if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "learning_rate", "grad_norm", "tokens_per_s"):
        assert key in train_rows[-1], key
    assert train_rows[0]["learning_rate"] > train_rows[-1]["learning_rate"]  # linear decay
    assert final["loss"] == train_rows[-1]["loss"]
    assert (tmp_path / "dpo" / "model.safetensors").is_file() and (tmp_path / "dpo" / "tokenizer.json").is_file()


def test_soft_loss_at_one_half_has_no_gradient(pairs_file, tmp_path):
    config = DPOConfig(data=str(pairs_file), out=str(tmp_path / "soft"), batch_size=4, max_steps=1,
                         loss_type="soft", reference="copy", **SHORT)
    trainer = prepare_dpo(config)
    batch = collate_pairs(trainer.train_examples[:4], trainer.tokenizer.pad_token_id)

    def grad_norm(p):
        trainer.model.zero_grad()
        loss, _, _ = trainer.loss_fn(trainer.model, {**batch, "p_chosen": torch.full((4,), p)})
        loss.backward()
        return torch.sqrt(sum((q.grad.float() ** 2).sum() for q in trainer.model.parameters() if q.grad is not None))

    assert grad_norm(0.5).item() < 1e-6
    assert grad_norm(0.9).item() > 1e-3


def test_sft_lowers_the_loss_on_its_data(sft_file, tmp_path):
    config = TrainConfig(data=str(sft_file), out=str(tmp_path / "sft"), batch_size=4, max_steps=5,
                         learning_rate=5e-5, **SHORT)
    trainer = prepare_sft(config)
    example = trainer.train_examples[0]
    assert example["labels"][0] == -100 and any(label != -100 for label in example["labels"])
    trainer.eval_examples = trainer.train_examples
    before = trainer.evaluate()["eval/loss"]
    trainer.train()
    assert trainer.evaluate()["eval/loss"] < before - 0.05


def test_lora_changes_only_the_adapter_and_merging_keeps_outputs(pairs_file, tmp_path):
    config = DPOConfig(data=str(pairs_file), out=str(tmp_path / "lora"), batch_size=4, max_steps=2,
                         learning_rate=1e-3, lora=True, lora_r=4, merge_lora=True, **SHORT)
    trainer = prepare_dpo(config)
    assert config.reference_mode == "adapter"
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    ids = torch.tensor([trainer.train_examples[0]["prompt_ids"] + trainer.train_examples[0]["chosen_ids"]])
    with torch.no_grad():
        unmerged = trainer.model(input_ids=ids).logits
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, unmerged, atol=1e-3)
    assert not any("lora" in k for k in merged.state_dict())


def test_bad_input_is_refused_before_training(tmp_path, pairs_file, sft_file):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError):
        prepare_dpo(DPOConfig(data=str(empty), out=str(tmp_path / "x"), **SHORT))
    no_cols = tmp_path / "cols.jsonl"
    no_cols.write_text(json.dumps({"prompt": "hi", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match="missing column"):
        prepare_dpo(DPOConfig(data=str(no_cols), out=str(tmp_path / "x"), **SHORT))
    with pytest.raises(DataError, match="p_chosen"):
        no_p = tmp_path / "nop.jsonl"
        no_p.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
        prepare_dpo(DPOConfig(data=str(no_p), out=str(tmp_path / "x"), loss_type="soft", **SHORT))
    same_start = tmp_path / "same.jsonl"
    same_start.write_text(json.dumps({"prompt": "Is it safe?", "chosen": "Sure, the short answer is yes.",
                                      "rejected": "Sure, the short answer is no."}) + "\n")
    with pytest.raises(DataError, match="truncated away"):  # cut to 3 response tokens, both say "Sure, the"
        prepare_dpo(DPOConfig(data=str(same_start), out=str(tmp_path / "x"), max_length=40, max_prompt_length=37,
                                progress=False))
    with pytest.raises(DataError, match="lost their assistant tokens"):
        prepare_sft(TrainConfig(data=str(sft_file), out=str(tmp_path / "x"), max_length=16, max_prompt_length=8,
                                progress=False))
    with pytest.raises(ValueError, match="cannot load model"):
        prepare_dpo(DPOConfig(data=str(pairs_file), out=str(tmp_path / "x"), model=str(tmp_path), **SHORT))


def _params(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_random_sigkills_then_resume_match_an_uninterrupted_run(pairs_file, tmp_path):
    """Killed on events (at start-up once the manifest is written, then in the middle of writing the step-4
    checkpoint), resumed each time with --resume: the same kills land on a slow or a fast machine. A random
    12M-parameter Llama (its checkpoint, with AdamW's state, is about 140 MB: long enough to be caught mid-write)
    keeps each of the four starts to seconds; what is tested is the trainer's resume, not the model."""
    from tests.tiny import save, tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = save(tiny_causal_lm(tok, hidden_size=1024), tok, tmp_path / "model")
    base = [sys.executable, "-m", "cai", "train", "dpo", "--model", model, "--data", str(pairs_file), "--batch-size", "2",
            "--max-steps", "6", "--save-steps", "2", "--save-total-limit", "1", "--learning-rate", "5e-5",
            "--max-length", "96", "--max-prompt-length", "32", "--no-progress"]
    straight = run_command(base + ["--out", str(tmp_path / "a")], timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "b"
    command = base + ["--out", str(out), "--resume"]
    events = [lambda: (out / "train_manifest.json").exists(),  # start-up done, before the first step ends
              lambda: (out / "checkpoints" / "step-4.partial").exists()]  # mid-checkpoint
    seen = []
    for due in events:
        proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        assert kill_when(proc, due), "the run finished before its kill event"
        checkpoints = sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else []
        for folder in checkpoints:  # a checkpoint folder is whole (a .partial one is ignored and replaced)
            assert folder.name.endswith(".partial") or (folder / "trainer_state.json").is_file()
        seen.append(max((int(c.name.split("-")[1]) for c in checkpoints if not c.name.endswith(".partial")),
                        default=0))
    assert seen == [0, 2]  # killed before any checkpoint, then while step 4's was written (step 2's whole)
    resumed = run_command(command, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step logged once, whatever was cut
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_a_checkpoint_that_cannot_be_written_ends_training_clearly(sft_file, tmp_path):
    """A real failing write: a 64 MB file-size limit, under the size of the weights a checkpoint holds."""
    command = [sys.executable, "-m", "cai", "train", "sft", "--data", str(sft_file), "--out", str(tmp_path / "s"),
               "--batch-size", "4", "--max-steps", "2", "--save-steps", "1", "--max-length", "96",
               "--max-prompt-length", "32", "--no-progress"]
    failed = run_command(command, timeout=600, preexec_fn=limited_file_size(64 * 2**20))
    assert failed.returncode == 1, failed.stderr[-3000:]
    message = failed.stderr.strip().splitlines()[-1]
    assert "cannot write checkpoint" in message and "step-1" in message and "--resume" in message, message
    assert "Traceback" not in failed.stderr
    assert [json.loads(line)["step"] for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not list((tmp_path / "s" / "checkpoints").iterdir())  # no half-written checkpoint left behind


@pytest.mark.engine
def test_a_trained_model_runs_in_the_vllm_engine(pairs_file, tmp_path, loop):
    from cai.engines import EngineConfig, Sampling, create_engine

    config = DPOConfig(data=str(pairs_file), out=str(tmp_path / "m"), batch_size=4, max_steps=1, **SHORT)
    prepare_dpo(config).train()

    async def run():
        engine = create_engine(EngineConfig(model=str(tmp_path / "m"), **TEST_ENGINE))
        try:
            return await engine.generate([{"role": "user", "content": "Say hello."}], Sampling(max_tokens=8))
        finally:
            await engine.close()

    out = loop.run_until_complete(run())
    assert out.completion_tokens >= 1 and out.text.strip()
