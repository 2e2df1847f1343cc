"""Trainer pieces with numbers computed by hand: log-probs, DPO/IPO/soft losses, rewards, batch order
(pure logic on small tensors, no model)."""

import math

import pytest
import torch

from cai.train.data import IGNORE
from cai.train.loop import batches
from cai.train.losses import preference_loss, sequence_logps


def test_sequence_logps_sums_only_labelled_tokens():
    # vocabulary of 2; position 0 gives p = (1/4, 3/4), position 1 gives (1/2, 1/2), position 2 is masked
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [5.0, 0.0]]])
    labels = torch.tensor([[1, 0, IGNORE]])
    assert sequence_logps(logits, labels).item() == pytest.approx(math.log(3 / 4) + math.log(1 / 2), abs=1e-6)


POLICY_C, POLICY_R = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0])
REF_C, REF_R = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_dpo_sigmoid_loss_rewards_and_margins_by_hand():
    losses, m = preference_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1)
    # delta = (-10 + 11) - (-12 + 11) = 2 ; (-5 + 5) - (-4 + 5) = -1
    expected = [-math.log(sig(0.1 * 2)), -math.log(sig(0.1 * -1))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-5)
    assert m["rewards/chosen"].tolist() == pytest.approx([0.1, 0.0], abs=1e-6)
    assert m["rewards/rejected"].tolist() == pytest.approx([-0.1, 0.1], abs=1e-6)
    assert m["rewards/margins"].tolist() == pytest.approx([0.2, -0.1], abs=1e-6)
    assert m["rewards/accuracies"].tolist() == [1.0, 0.0]
    assert m["logps/chosen"].tolist() == [-10.0, -5.0] and m["logps/rejected"].tolist() == [-12.0, -4.0]


def test_label_smoothing_and_ipo_by_hand():
    losses, _ = preference_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, label_smoothing=0.2)
    expected = [-0.8 * math.log(sig(0.2)) - 0.2 * math.log(sig(-0.2)),
                -0.8 * math.log(sig(-0.1)) - 0.2 * math.log(sig(0.1))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-5)
    ipo, _ = preference_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, loss_type="ipo")
    assert ipo.tolist() == pytest.approx([(2 - 5) ** 2, (-1 - 5) ** 2], abs=1e-5)


def test_soft_loss_weights_by_the_judges_probability():
    p = torch.tensor([0.95, 0.55])
    soft, _ = preference_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, loss_type="soft", p_chosen=p)
    expected = [-0.95 * math.log(sig(0.2)) - 0.05 * math.log(sig(-0.2)),
                -0.55 * math.log(sig(-0.1)) - 0.45 * math.log(sig(0.1))]
    assert soft.tolist() == pytest.approx(expected, abs=1e-5)
    ones, _ = preference_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, loss_type="soft", p_chosen=torch.ones(2))
    sigmoid, _ = preference_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1)
    assert ones.tolist() == pytest.approx(sigmoid.tolist(), abs=1e-6)  # p = 1 is standard DPO


def test_soft_loss_pushes_less_for_a_weaker_judgement_and_not_at_all_for_a_coin_flip():
    def grad(p):
        chosen = torch.tensor([-10.0], requires_grad=True)
        loss, _ = preference_loss(chosen, torch.tensor([-10.0]), torch.tensor([-10.0]), torch.tensor([-10.0]),
                                  beta=0.1, loss_type="soft", p_chosen=torch.tensor([p]))
        loss.sum().backward()
        return chosen.grad.item()

    # at delta = 0: d loss / d logp_chosen = -beta (p - 1/2)
    assert grad(0.95) == pytest.approx(-0.1 * 0.45, abs=1e-6)
    assert grad(0.55) == pytest.approx(-0.1 * 0.05, abs=1e-6)
    assert grad(0.5) == 0.0


def test_soft_loss_requires_p():
    with pytest.raises(ValueError, match="p_chosen"):
        preference_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, loss_type="soft")


def test_batch_order_is_seeded_complete_and_split_across_processes():
    one = batches(10, 3, seed=1, epoch=0)
    assert sorted(i for b in one for i in b) == list(range(10)) and [len(b) for b in one] == [3, 3, 3, 1]
    assert one == batches(10, 3, seed=1, epoch=0) and one != batches(10, 3, seed=1, epoch=1)
    rank0, rank1 = batches(10, 2, 1, 0, rank=0, world=2), batches(10, 2, 1, 0, rank=1, world=2)
    assert sorted(i for b in rank0 + rank1 for i in b) == list(range(10))
    assert not {i for b in rank0 for i in b} & {i for b in rank1 for i in b}
    full = batches(10, 3, seed=1, epoch=0, drop_last=True)  # PPO: every step a whole rollout batch
    assert full == one[:3] and [len(b) for b in full] == [3, 3, 3]


def _tokenizer():
    from transformers import AutoTokenizer

    from cai.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(None))


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Hi", "chosen": "Same answer.", "rejected": "Same answer."}, "chosen and rejected are identical"),
    ({"prompt": "Hi", "chosen": "Yes.", "rejected": "No.", "p_chosen": float("nan")}, "p_chosen must be"),
    ({"prompt": "Hi", "chosen": "Yes.", "rejected": "No.", "p_chosen": 1.5}, "p_chosen must be"),
    ({"prompt": "Hi", "chosen": "Yes.", "rejected": "No.", "p_chosen": None}, "p_chosen must be"),
    ({"prompt": "Hi", "chosen": "Yes.", "rejected": "No.", "p_chosen": "0.9"}, "p_chosen must be"),
    ({"prompt": "Hi", "chosen": 3, "rejected": "No."}, "column 'chosen'"),
])
def test_bad_preference_rows_are_errors_naming_the_row(row, message):
    """Real tokenizer, no model: each bad row stops the run before training with a reason."""
    from cai.train.data import DataError, Truncation, tokenize_preferences

    good = {"prompt": "Hello", "chosen": "Hi there.", "rejected": "Go away.", "p_chosen": 0.8}
    with pytest.raises(DataError, match=message):
        tokenize_preferences([good, {"p_chosen": 0.8, **row}], _tokenizer(), Truncation(), need_p=False)


def test_bad_jsonl_training_files_name_the_line(tmp_path):
    from cai.train.data import DataError, load_rows

    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", \n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_rows(str(path), kind="dpo")
    path.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n\xff\xfe\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid UTF-8"):
        load_rows(str(path), kind="dpo")
    path.write_bytes(b'[1, 2]\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: expected a JSON object"):
        load_rows(str(path), kind="dpo")
    path.write_bytes(b'\n\n')
    with pytest.raises(DataError, match="empty"):
        load_rows(str(path), kind="dpo")
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,chosen\nhi,there\n")
    from cai.train.data import check_columns

    with pytest.raises(DataError, match="missing column.*rejected"):
        check_columns(load_rows(str(csv), kind="dpo"), ("prompt", "chosen", "rejected"), "preference data")


def test_head_sequence_logps_matches_the_full_logits_in_value_and_gradient():
    from cai.train.losses import head_sequence_logps

    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=True)
    labels = torch.tensor([[1, 2, IGNORE, 4, 5], [IGNORE, IGNORE, 3, 3, 0], [7, 8, 9, 10, IGNORE]])
    plain = sequence_logps(head(hidden), labels)
    plain.sum().backward()
    expected_hidden, expected_weight = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    chunked = head_sequence_logps(hidden, head, labels, rows_per_chunk=2)
    chunked.sum().backward()
    assert chunked.tolist() == pytest.approx(plain.tolist(), abs=1e-5)
    assert torch.allclose(hidden.grad, expected_hidden, atol=1e-6)
    assert torch.allclose(head.weight.grad, expected_weight, atol=1e-6)
