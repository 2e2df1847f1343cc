"""Online iterative DPO (issue 13) and vLLM rollouts: pair selection and prompt splits by hand (pure), vLLM sampling
from weights synced in place (greedy tokens equal transformers' on the same perturbed weights), PPO with
`--rollouts vllm` (`cai train online-dpo` killed mid-round then rerun: tests/server/test_online_resume.py)."""

from __future__ import annotations

import json

import pytest


def row(prompt: str, chosen: int, rejected: int, p: float) -> dict:
    return {"id": f"{prompt}/s{min(chosen, rejected)}-vs-s{max(chosen, rejected)}", "p_chosen": p,
            "chosen_source": f"sample{chosen}", "rejected_source": f"sample{rejected}"}


def test_best_worst_pairs_rank_by_mean_win_probability():
    from cai.train.online_plan import best_worst_pairs

    # prompt a, three samples: 0 beats 1 (0.9), 2 beats 0 (0.6), 1 beats 2 (0.7)
    #   mean win: s0 = (0.9 + 0.4) / 2 = 0.65, s1 = (0.1 + 0.7) / 2 = 0.4, s2 = (0.6 + 0.3) / 2 = 0.45
    #   best s0, worst s1: the pair s0-vs-s1 with its own label 0.9
    rows = [row("a", 0, 1, 0.9), row("a", 2, 0, 0.6), row("a", 1, 2, 0.7), row("b", 1, 0, 0.55)]
    out = best_worst_pairs(rows)
    assert [(r["id"], r["chosen_source"], r["p_chosen"]) for r in out] == [("a/s0-vs-s1", "sample0", 0.9),
                                                                          ("b/s0-vs-s1", "sample1", 0.55)]
    assert out[0]["best_worst_scores"] == pytest.approx([0.65, 0.4])


def test_prompts_are_split_fresh_per_round_with_a_held_out_set(tmp_path):
    from cai.inputs import InputError
    from cai.train.online_plan import split_prompts
    from cai.train.rl_config import OnlineDPOConfig

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) + "\n" for i in range(11)))
    config = OnlineDPOConfig(data=str(prompts), out="o", rounds=3, heldout_prompts=2)
    heldout, rounds, per_round = split_prompts(config)
    ids = [i.id for r in rounds for i in r]
    assert len(heldout) == 2 and [len(r) for r in rounds] == [3, 3, 3] and per_round == 3  # 9 prompts / 3 rounds
    assert len(set(ids)) == 9 and not set(ids) & {i.id for i in heldout}
    assert split_prompts(config) == (heldout, rounds, 3)  # seeded
    _, reused, _ = split_prompts(config.model_copy(update={"reuse_prompts": True}))
    assert [[i.id for i in r] for r in reused] == [[i.id for i in reused[0]]] * 3 and len(reused[0]) == 9
    with pytest.raises(InputError, match="fresh prompt"):
        split_prompts(config.model_copy(update={"prompts_per_round": 4}))


def _online_manifest(config, heldout, per_round):
    from cai.train.online_plan import online_fields

    return json.dumps({**online_fields(config, heldout), "per_round": per_round})


def test_an_online_folder_with_other_settings_is_refused(tmp_path):
    from cai.errors import UsageError
    from cai.runs.resume import check_resume
    from cai.runs.store import RunConflictError
    from cai.train.online_plan import MANIFEST, check_online_output, online_fields, split_prompts
    from cai.train.rl_config import OnlineDPOConfig

    config = OnlineDPOConfig(out=str(tmp_path / "o"), rounds=2)
    heldout, _, per_round = split_prompts(config)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / MANIFEST).write_text(_online_manifest(config, heldout, per_round))
    more = config.model_copy(update={"rounds": 3})
    earlier = check_online_output(more, "m")
    check_resume(earlier, online_fields(more, heldout), "o")  # more rounds: the same run, continued
    for change, named in (({"beta": 0.5}, "settings.beta"), ({"samples_per_prompt": 3}, "settings.samples_per_prompt"),
                          ({"judge": {"principles_per_pair": 3}}, "settings.judge"),
                          ({"heldout_prompts": 8}, "settings.heldout_prompts")):
        changed = config.model_copy(update=change)
        with pytest.raises(RunConflictError, match=named.replace(".", r"\.")):
            check_resume(earlier, online_fields(changed, split_prompts(changed)[0]), "o")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds no online-dpo run"):
        check_online_output(config.model_copy(update={"out": str(tmp_path / "other")}), "m")
    assert (tmp_path / "other" / "x.txt").read_text() == "mine"


def test_more_rounds_continue_with_fresh_prompts_and_edited_held_out_prompts_are_refused(tmp_path):
    from cai.runs.resume import check_resume
    from cai.runs.store import RunConflictError
    from cai.train.online_plan import online_fields, split_prompts
    from cai.train.rl_config import OnlineDPOConfig

    prompts = tmp_path / "p.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(12)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = OnlineDPOConfig(data=str(prompts), out="o", rounds=1, heldout_prompts=2)
    heldout, rounds_1, per_round = split_prompts(first)
    assert per_round == 10  # one round takes all 10 training prompts...
    first = first.model_copy(update={"prompts_per_round": 4})
    heldout, rounds_1, per_round = split_prompts(first)
    assert per_round == 4
    # ...continued with --rounds 3: the recorded per-round share keeps round 1's prompts and gives fresh ones
    heldout_3, rounds_3, _ = split_prompts(first.model_copy(update={"rounds": 2}), per_round)
    assert [i.id for i in rounds_3[0]] == [i.id for i in rounds_1[0]]
    assert not {i.id for i in rounds_3[1]} & {i.id for i in rounds_1[0]}  # round 2 never reuses round 1's prompts
    with pytest.raises(Exception, match="fresh prompt"):  # a fourth round of 4 would need 16 training prompts
        split_prompts(first.model_copy(update={"rounds": 3}), per_round)
    # held-out prompts edited under the same ids: the continuation is refused, naming the inputs that changed
    stored = online_fields(first, heldout)
    held_ids = {i.id for i in heldout}
    prompts.write_text("".join(json.dumps({**r, "prompt": r["prompt"] + " (edited)"} if r["id"] in held_ids else r)
                               + "\n" for r in rows))
    edited, _, _ = split_prompts(first, per_round)
    assert [i.id for i in edited] == [i.id for i in heldout]
    with pytest.raises(RunConflictError, match=r"inputs\.data, inputs\.heldout"):
        check_resume(stored, online_fields(first, edited), "o")


@pytest.mark.engine
def test_vllm_rollouts_sample_from_weights_synced_in_place():
    import torch
    from transformers import AutoModelForCausalLM

    from cai.models import resolve_model
    from cai.train.modeling import load_tokenizer
    from cai.train.vllm_rollouts import VLLMRollouts

    tokenizer, path = load_tokenizer(None)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=torch.float32).eval()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
               for q in ("Name a colour.", "What is 2 + 2?", "Say hello to a friend.")]

    def greedy(m):
        out = []
        for ids in prompts:
            generated = m.generate(input_ids=torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
            out.append(generated[0, len(ids):].tolist())
        return out

    rollouts = VLLMRollouts(path, tokenizer, max_new_tokens=6, temperature=0.0,
                            engine_settings={"gpu_memory_utilization": 0.1, "max_model_len": 512})
    try:
        cut = lambda rows: [r[:6] for r in rows]  # noqa: E731
        before = greedy(model)
        assert cut(rollouts.generate(prompts)) == before
        torch.manual_seed(0)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.down_proj.weight.add_(0.02 * torch.randn_like(layer.mlp.down_proj.weight))
        after = greedy(model)
        assert after != before  # the perturbation changes the answers, so the check below means something
        rollouts.sync_weights(model)
        assert cut(rollouts.generate(prompts)) == after
        assert len(rollouts.sync_seconds) == 1 and rollouts.sync_seconds[0] > 0
        # issue 26, finding 5: a request's seed reaches the engine process, so the same (weights, prompt, seed)
        # gives the same draw at T = 1, and other seeds give other draws (32 new tokens: a collision is unlikely)
        rollouts.temperature, rollouts.max_new_tokens = 1.0, 32
        seeded = [rollouts.generate(prompts, seeds=[11, 12, 13]) for _ in range(2)]
        assert seeded[0] == seeded[1]
        assert rollouts.generate(prompts, seeds=[21, 22, 23]) != seeded[0]
    finally:
        rollouts.close()


@pytest.mark.engine
@pytest.mark.model
def test_ppo_samples_on_vllm_and_syncs_every_step(tmp_path):
    from cai.train.ppo import prepare_ppo
    from cai.train.rl_config import PPOConfig
    from cai.train.scoring import load_reward_model

    rm, tok, _ = load_reward_model(None)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    trainer = prepare_ppo(PPOConfig(out=str(tmp_path / "ppo"), reward_model=str(tmp_path / "rm"), limit=10,
                                    eval_fraction=0.2, rollout_batch_size=4, batch_size=4, ppo_epochs=1,
                                    max_new_tokens=4, max_length=128, max_prompt_length=96, max_steps=2,
                                    rollouts="vllm", rollout_gpu_memory_utilization=0.1, progress=False,
                                    missing_eos_penalty=0.0, eval_judge="default", eval_judge_check=False,
                                    eval_judge_gpu_memory_utilization=0.1))
    rollouts = trainer.rollouts
    assert type(rollouts).__name__ == "VLLMRollouts"
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "objective/scores" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(1 <= r["response_length"] <= 4 and r["time/rollout_s"] > 0 for r in steps)
    assert len(rollouts.sync_seconds) == 2  # after each step
    assert rollouts.engine is None  # closed with the run
    # the evaluation judge: step 0 stores the baseline answers, the final evaluation is judged against them
    evals = [r for r in rows if "eval/objective/scores" in r]
    assert [r["step"] for r in evals] == [0, 2] and "eval/judge_win_rate" not in evals[0]
    assert 0 <= evals[1]["eval/judge_win_rate"] <= 1 and 1 <= evals[1]["eval/judge_valid"] <= 2
    baseline = json.loads((tmp_path / "ppo" / "eval_judge_baseline.json").read_text())
    assert len(baseline["answers"]) == 2
