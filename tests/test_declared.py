"""Declared stages and LLM calls: the pipeline is data, calls match their templates, `prompts` shows them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from personaloom.errors import UserError
from personaloom.llm.prompts import PromptLibrary
from personaloom.paths import PROMPTS_DIR
from personaloom.pipeline import STAGES, TABLE_MODELS, all_calls, build_calls
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.samples import sample_records
from personaloom.testing.cli import assert_one_line_error, run


def test_stages_read_only_what_earlier_stages_wrote() -> None:
    written: set[str] = set()
    for stage in STAGES:
        assert set(stage.inputs) <= written, f"{stage.name} reads {stage.inputs} before they exist"
        assert stage.output not in written and TABLE_MODELS[stage.output] is stage.record
        written.add(stage.output)
    assert len({s.name for s in STAGES}) == len(STAGES)


@pytest.mark.parametrize("prompt_set", ["default", "small"])
def test_every_call_has_its_template_and_renders_its_sample(prompt_set: str) -> None:
    library = PromptLibrary(prompt_set=prompt_set)
    library.check(all_calls())
    samples = sample_records(load_catalogue())
    for call in all_calls():
        assert call.sample is not None, call.name
        item = call.sample(samples)
        rendered = library.render(call.name, **call.variables_for(item))
        assert rendered.messages and all(m["content"].strip() for m in rendered.messages), call.name
        assert call.tokens_for(item) > 0


def test_every_template_belongs_to_exactly_one_call() -> None:
    names = [c.name for c in all_calls()]
    assert len(names) == len(set(names))
    templates = {
        str(p.relative_to(PROMPTS_DIR / "default"))[:-3] for p in (PROMPTS_DIR / "default").rglob("*.j2")
    }
    assert templates == set(names)


@pytest.fixture
def prompts_copy(tmp_path: Path) -> Path:
    root = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, root)
    return root


def test_a_template_variable_no_call_provides_fails_when_prompts_load(prompts_copy: Path) -> None:
    path = prompts_copy / "default" / "queries" / "simulate.j2"
    path.write_text(path.read_text().replace("{% block user %}", "{% block user %}{{ mood_of_the_day }}", 1))
    with pytest.raises(UserError) as e:
        PromptLibrary(root=prompts_copy).check(build_calls())
    msg = str(e.value)
    assert "simulate.j2" in msg and "mood_of_the_day" in msg and "queries/simulate" in msg and "\n" not in msg


def test_a_missing_template_fails_when_prompts_load(prompts_copy: Path) -> None:
    (prompts_copy / "default" / "filter" / "quality.j2").unlink()
    with pytest.raises(UserError, match="filter/quality.j2 is missing"):
        PromptLibrary(root=prompts_copy).check(build_calls())


def test_render_gives_exactly_the_declared_variables() -> None:
    from personaloom.stages.queries import SIMULATE

    broken = type(SIMULATE)(**{**SIMULATE.__dict__, "variables": ("persona", "scene")})
    samples = sample_records(load_catalogue())
    with pytest.raises(TypeError, match="queries/simulate"):
        broken.variables_for(broken.sample(samples))


def test_prompts_command_lists_and_renders_without_a_model() -> None:
    listed = run("prompts")
    assert listed.returncode == 0, listed.stderr
    for call in all_calls():
        assert call.name in listed.stdout
    shown = run("prompts", "--show", "queries/simulate", "--schema")
    assert shown.returncode == 0, shown.stderr
    persona = sample_records(load_catalogue()).persona.persona
    assert persona.Demographics.Name in shown.stdout  # the sample persona, really rendered
    assert (
        "--- system" in shown.stdout and "--- user" in shown.stdout and "personalized_query" in shown.stdout
    )
    small = run("prompts", "--show", "personas/synthesize", "--prompt-set", "small")
    assert small.returncode == 0 and "small set" in small.stdout
    assert_one_line_error(run("prompts", "--show", "nope/nothing"), "nope/nothing")


def test_a_declared_temperature_reaches_the_request() -> None:
    """Judges are declared at temperature 0; a call that declares none gets the run's temperature."""
    import asyncio

    from personaloom.llm.client import LLM
    from personaloom.schemas.config import LLMConfig
    from personaloom.stages.filter.judges import ANSWERABILITY
    from personaloom.stages.queries import SIMULATE
    from personaloom.testing.fake_openai import FakeOpenAI

    samples = sample_records(load_catalogue())

    async def ask(llm: LLM) -> None:
        try:
            await llm.run(ANSWERABILITY, ANSWERABILITY.sample(samples))
            await llm.run(SIMULATE, SIMULATE.sample(samples))
        finally:
            await llm.aclose()

    with FakeOpenAI() as fake:
        asyncio.run(
            ask(
                LLM(LLMConfig(model="fake", temperature=0.8), base_url=fake.base_url, api_key="k", cache=None)
            )
        )
        sent = {r["body"]["messages"][0]["content"][:40]: r["body"]["temperature"] for r in fake.requests}
    assert sorted(sent.values()) == [0.0, 0.8]
