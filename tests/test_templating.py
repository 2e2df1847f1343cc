"""Stage templates: sandboxed, strict, and user text is never compiled (pure logic)."""

import pytest

from cai.constitution import load_constitution
from cai.generate.critique import few_shot_messages
from cai.templating import TemplateError, render

INJECTIONS = [
    "{{ 7*7 }}",
    "{% include '/etc/passwd' %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for x in range(3) %}loop{% endfor %}",
    "{#comment#} {{ config }}",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_principle_text_with_template_syntax_comes_out_verbatim(text):
    out = render("critique.j2", principle={"critique_request": text})
    assert out == text


def test_revision_template_appends_its_instruction():
    out = render("revision.j2", principle={"revision_request": "Fix {{ it }}."})
    assert out.startswith("Fix {{ it }}.")
    assert out.endswith("Write only the revised response, with no preamble.")


def test_missing_variable_is_an_error_not_empty_text():
    with pytest.raises(TemplateError, match="undefined"):
        render("critique.j2")


def test_custom_template_folder_is_sandboxed(tmp_path):
    (tmp_path / "critique.j2").write_text("{{ principle.__class__.__mro__ }}")
    with pytest.raises(TemplateError):
        render("critique.j2", tmp_path, principle={"critique_request": "x"})
    with pytest.raises(TemplateError, match="not found"):
        render("nope.j2", tmp_path)
    (tmp_path.parent / "secret.txt").write_text("outside the template folder")
    (tmp_path / "critique.j2").write_text('{% include "../secret.txt" %}')
    with pytest.raises(TemplateError):  # includes cannot climb out of the folder
        render("critique.j2", tmp_path)
    (tmp_path / "critique.j2").write_text("{{ principle.critique_request.format.__globals__ }}")
    with pytest.raises(TemplateError):
        render("critique.j2", tmp_path, principle={"critique_request": "x"})


def test_few_shot_examples_render_into_six_turns_each():
    c = load_constitution("harmless")
    messages = few_shot_messages(c.few_shot)
    assert len(messages) == 6 * len(c.few_shot)
    assert [m["role"] for m in messages[:6]] == ["user", "assistant"] * 3
    assert messages[0]["content"] == c.few_shot[0].prompt
    assert messages[2]["content"] == c.few_shot[0].critique_request.strip()
    assert messages[5]["content"] == c.few_shot[0].revision.strip()
