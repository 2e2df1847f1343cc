"""Prompt set parsing: formats, columns, HH transcripts and bad rows (pure logic)."""

import json

import pytest

from cai.inputs import InputError, InputProblem, PromptItem, load_prompts, parse_hh_transcript, to_messages


def test_bundled_sets_are_large_enough_and_tagged():
    red = load_prompts("red-team")
    benign = load_prompts("benign")
    assert all(isinstance(i, PromptItem) for i in red + benign)
    assert len(red) >= 100 and len(benign) >= 50
    assert len({i.tags[0] for i in red}) >= 8
    assert len({i.id for i in red}) == len(red)
    assert red[0].messages == [{"role": "user", "content": red[0].messages[0]["content"]}]


def test_hh_transcript_becomes_chat_ending_in_a_user_turn():
    text = "\n\nHuman: How do I pick a lock?\n\nAssistant: With a pick.\n\nHuman: And a tension wrench?\n\nAssistant: Yes."
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "With a pick."},
        {"role": "user", "content": "And a tension wrench?"},
        {"role": "assistant", "content": "Yes."},
    ]
    messages = to_messages(text)
    assert len(messages) == 3 and messages[-1] == {"role": "user", "content": "And a tension wrench?"}
    assert to_messages("Human: hi there") == [{"role": "user", "content": "hi there"}]


def test_jsonl_bad_lines_become_problems_and_the_rest_loads(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "first"}\n{not json}\n{"prompt": "   "}\n\xff\xfe{"prompt": "x"}\n{"prompt": "last"}\n')
    items = load_prompts(path)
    assert [type(i).__name__ for i in items] == ["PromptItem", "InputProblem", "InputProblem", "InputProblem", "PromptItem"]
    assert "invalid JSON" in items[1].reason and items[1].id.endswith(":2")
    assert "empty or whitespace" in items[2].reason
    assert "invalid UTF-8" in items[3].reason
    assert items[4].messages[0]["content"] == "last"


def test_csv_parquet_json_and_datasets_folder_agree(tmp_path):
    rows = [{"question": "What is 2+2?", "category": "math"}, {"question": "Name a colour.", "category": "art"}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "p.csv").write_text("question,category\nWhat is 2+2?,math\nName a colour.,art\n")
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    loaded = [load_prompts(tmp_path / name) for name in ("p.json", "p.csv", "p.parquet", "ds")]
    for items in loaded:
        assert [i.messages[0]["content"] for i in items] == ["What is 2+2?", "Name a colour."]
        assert [i.tags for i in items] == [["math"], ["art"]]
        assert [i.id for i in items] == [i.id for i in loaded[0]]  # content ids: the same prompt, the same id


def test_missing_column_and_empty_set_are_clear_errors(tmp_path):
    (tmp_path / "p.csv").write_text("title,body\na,b\n")
    with pytest.raises(InputError, match="no prompt column found"):
        load_prompts(tmp_path / "p.csv")
    with pytest.raises(InputError, match="column 'prompt' not found"):
        load_prompts(tmp_path / "p.csv", column="prompt")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(InputError, match="empty"):
        load_prompts(tmp_path / "e.jsonl")


def test_duplicate_prompts_get_distinct_stable_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "same"}\n{"prompt": "same"}\n{"prompt": "other"}\n')
    ids = [i.id for i in load_prompts(path)]
    assert len(set(ids)) == 3 and ids[1] == ids[0] + "~2"
    assert ids == [i.id for i in load_prompts(path)]


def test_template_syntax_in_prompts_is_kept_verbatim(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "{{ 7*7 }} {% include 'x' %}"}) + "\n")
    assert load_prompts(path)[0].messages[0]["content"] == "{{ 7*7 }} {% include 'x' %}"


def test_limit_and_problems_keep_order(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(10)))
    items = load_prompts(path, limit=3)
    assert [i.messages[0]["content"] for i in items] == ["p0", "p1", "p2"]
    assert not any(isinstance(i, InputProblem) for i in items)
