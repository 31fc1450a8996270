"""Rows that echo a worked example of a prompt, or whose neutralized query left the task, are dropped."""

from __future__ import annotations

from datetime import UTC, datetime

from personaloom.llm.prompts import PromptLibrary, example_texts
from personaloom.schemas.records import Query, Scene
from personaloom.stages.filter.grounding import ExampleIndex, content_tokens, drifted
from personaloom.stages.filter.stage import grounded

SMALL_EXAMPLE = "Suggests five quick recipes that fit her shift times and a shopping list."


def _scene(expected: str = "Lists three savings accounts with their rates.", **kw) -> Scene:
    fields = {
        "scene_id": "p0-s001",
        "persona_id": "p0",
        "session_index": 1,
        "timestamp": datetime(2025, 3, 1, 9, tzinfo=UTC),
        "kind": "common",
        "title": "Save for a goal",
        "description": "The user wants to save 3,000 euros for a new bike by December.",
        "expected_response": expected,
        "context": "It is March; she earns 1,900 euros a month and spends about 1,500.",
        "apis": [],
    }
    return Scene(**(fields | kw))


def _query(personalized: str, neutral: str) -> Query:
    return Query(
        query_id="p0-s001-q0",
        scene_id="p0-s001",
        persona_id="p0",
        session_index=1,
        personalized_query=personalized,
        neutralized_query=neutral,
        revealed_fields=[],
    )


def test_worked_examples_are_found_in_the_templates() -> None:
    assert SMALL_EXAMPLE in PromptLibrary(prompt_set="small").examples()
    assert not [e for e in example_texts('{{ persona.Name }} "Behavior_Engagement_Pattern" "a b"') if e]


def test_a_copied_example_is_rejected_even_with_small_edits() -> None:
    index = ExampleIndex(PromptLibrary(prompt_set="small").examples())
    q = _query(
        "How much should I put aside each month for my bike?", "How much should I save each month for a bike?"
    )
    for copied in (SMALL_EXAMPLE, SMALL_EXAMPLE.lower().rstrip("."), f"{SMALL_EXAMPLE} It also adds tips."):
        out = grounded([q], [_scene(copied)], index)
        (rej,) = out.rejections
        assert rej.reason == "copied_example" and "scene.expected_response" in (rej.detail or "")
    assert grounded([q], [_scene()], index).records == [q]


def test_a_neutralized_query_that_left_the_task_is_rejected() -> None:
    index = ExampleIndex([])
    personal = "ok so I really want that gravel bike by december, how do I save 3000 on my salary?"
    off = _query(personal, "What train options are there to Gdansk next Tuesday?")
    (rej,) = grounded([off], [_scene()], index).rejections
    assert rej.reason == "neutralization_drift"
    kept = _query(personal, "How can I save 3,000 euros for a bike by December?")
    assert grounded([kept], [_scene()], index).records == [kept]


def test_drift_in_scripts_without_spaces() -> None:
    assert "新幹" in content_tokens("東京から大阪への新幹線")
    personal = "来週の金曜日に東京から大阪へ新幹線で行きたいです。おすすめの時間は？"
    assert not drifted("東京から大阪への新幹線の時間を教えてください。", personal, "出張の移動")
    assert drifted("Bitte empfehlen Sie ein Rezept.", personal, "出張の移動")
