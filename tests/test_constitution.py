"""Constitution loading, validation and import (pure logic)."""

import json
import random

import pytest

from cai.constitution import ConstitutionError, import_constitution, load_constitution, parse_constitution

HARM_CATEGORIES = {"violence", "weapons", "crime", "fraud", "privacy", "self-harm", "hate", "harassment",
                   "sexual-content-minors", "misinformation", "manipulation", "dangerous-advice"}


def minimal(**extra):
    doc = {"name": "t", "principles": [{"id": "p1", "critique_request": "c?", "revision_request": "r."}]}
    doc.update(extra)
    return doc


def test_bundled_harmless_covers_the_harm_categories_and_evasiveness():
    c = load_constitution("harmless")
    assert len(c.principles) >= 16 and len(c.preference_principles) >= 16
    tags = {t for p in c.principles for t in p.tags}
    assert HARM_CATEGORIES <= tags
    assert "evasiveness" in tags
    assert {t for p in c.preference_principles for t in p.tags} >= HARM_CATEGORIES | {"evasiveness"}
    assert len(c.few_shot) == 2 and all(ex.revision for ex in c.few_shot)


def test_bundled_by_name_and_by_path_agree(tmp_path):
    by_name = load_constitution("helpful-honest")
    copy = tmp_path / "hh.yaml"
    copy.write_text(by_name.to_yaml())
    assert load_constitution(copy) == by_name
    assert load_constitution(copy).sha256 == by_name.sha256


def test_unknown_key_is_an_error_naming_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    doc = minimal()
    doc["principles"][0]["critque_request"] = "typo"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConstitutionError) as e:
        load_constitution(path)
    assert str(path) in str(e.value) and "principles.0.critque_request" in str(e.value)


def test_duplicate_ids_and_missing_fields_are_rejected():
    doc = minimal()
    doc["principles"].append(dict(doc["principles"][0]))
    with pytest.raises(ConstitutionError, match="duplicate id 'p1'"):
        parse_constitution(doc)
    with pytest.raises(ConstitutionError, match="principles.0.revision_request"):
        parse_constitution({"name": "t", "principles": [{"id": "p", "critique_request": "c"}]})
    with pytest.raises(ConstitutionError, match="principles"):
        parse_constitution({"name": "t", "principles": []})
    with pytest.raises(ConstitutionError, match="weight"):
        parse_constitution(minimal(principles=[{"id": "p", "critique_request": "c", "revision_request": "r",
                                                "weight": 0}]))


def test_malformed_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConstitutionError, match="not valid YAML"):
        load_constitution(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConstitutionError, match="expected a mapping"):
        load_constitution(listy)


def test_unsafe_yaml_tags_are_refused(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\nprinciples: []\n")
    with pytest.raises(ConstitutionError, match="not valid YAML"):
        load_constitution(evil)


def test_few_shot_needs_one_complete_form():
    with pytest.raises(ConstitutionError, match="structured example needs"):
        parse_constitution(minimal(few_shot=[{"prompt": "p", "response": "r"}]))
    with pytest.raises(ConstitutionError, match="either `messages`"):
        parse_constitution(minimal(few_shot=[{"prompt": "p", "messages": [{"role": "user", "content": "x"}]}]))


def test_weighted_sampling_honours_weights():
    c = parse_constitution(minimal(principles=[
        {"id": "heavy", "critique_request": "c", "revision_request": "r", "weight": 9},
        {"id": "light", "critique_request": "c", "revision_request": "r", "weight": 1},
    ]))
    rng = random.Random(0)
    draws = [c.sample_principle(rng).id for _ in range(4000)]
    assert 0.87 < draws.count("heavy") / len(draws) < 0.93


def test_import_anthropic_format(tmp_path):
    path = tmp_path / "CritiqueRevisionInstructions.json"
    path.write_text(json.dumps({
        "harmful0": {"prompt": ["Identify harmful content."], "edit_request": "Remove it."},
        "harmful1": {"prompt": ["Is it unethical?"], "edit_request": "Make it ethical."},
    }))
    c = import_constitution(path)
    assert [p.id for p in c.principles] == ["harmful0", "harmful1"]
    assert c.principles[1].critique_request == "Is it unethical?"
    assert c.principles[1].revision_request == "Make it ethical."


def test_import_llm_swarm_format(tmp_path):
    path = tmp_path / "swarm.json"
    path.write_text(json.dumps({
        "constitutions": [{"critic": "Find harm.", "revision": "Fix harm."}],
        "system_chat": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]],
    }))
    c = import_constitution(path, name="swarm")
    assert c.name == "swarm" and c.principles[0].critique_request == "Find harm."
    assert c.few_shot[0].messages[1].content == "hello"
    # the imported constitution round-trips through the YAML format
    assert parse_constitution(__import__("yaml").safe_load(c.to_yaml())) == c


def test_import_unknown_format(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ConstitutionError, match="unknown format"):
        import_constitution(path)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["name", "version", "principles", "id", "critique_request", "revision_request", "weight", "tags",
         "preference_principles", "question", "few_shot", "messages", "role", "content", "extra"]), inner,
        max_size=5)), max_leaves=25)


@settings(max_examples=200, deadline=None)
@given(yaml_values)
def test_any_data_loads_or_fails_with_one_clear_error(data):
    try:
        c = parse_constitution(data, "prop.yaml")
    except ConstitutionError as e:
        assert str(e).startswith("prop.yaml:")
    else:
        assert c.principles and len({p.id for p in c.principles}) == len(c.principles)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_file_loads_or_fails_with_one_clear_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("c") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_constitution(path)
    except ConstitutionError as e:
        assert str(path) in str(e)
