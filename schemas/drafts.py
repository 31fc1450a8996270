"""What the LLM is asked to return for each call (its JSON schema is sent as the response format).

Drafts hold only what the model writes; the stages merge them with the seed attributes into records.
Length limits keep small local models short and give grammar-constrained decoding an end.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model


class Draft(BaseModel):
    model_config = ConfigDict(extra="ignore")


class HintExpansion(Draft):
    expanded_hint: str = Field(min_length=10, max_length=300)


class ChangeDraft(Draft):
    """The LLM's part of a planned change: the new value of a narrative field, and the story."""

    after: str = Field("", max_length=160, description="the field's new value (narrative fields only)")
    reason: str = Field(min_length=2, max_length=200, description="what happened, in this person's life")


class PersonaDraft(Draft):
    Career_Information: str = Field(min_length=5, max_length=300)
    Values_and_Interests: list[str] = Field(min_length=2, max_length=8)
    Behavior_Engagement_Pattern: str = Field(min_length=5, max_length=300)
    Usage_Pattern: str = Field(min_length=5, max_length=300)
    Emotion_Pattern: str = Field(min_length=5, max_length=300)
    Purchase_Pattern: str = Field(min_length=5, max_length=300)
    Preferred_Styles: str = Field(min_length=5, max_length=300)
    Preferred_Formats: str = Field(min_length=5, max_length=300)
    Preferred_Workflows: str = Field(min_length=5, max_length=300)
    domain_vocabulary: list[str] = Field(min_length=1, max_length=8)
    changes: list[ChangeDraft] = Field(default_factory=list, max_length=10)


class SceneIdea(Draft):
    title: str = Field(min_length=3, max_length=120)
    description: str = Field(min_length=10, max_length=400)


class SceneList(Draft):
    scenes: list[SceneIdea] = Field(min_length=1, max_length=40)


@cache
def scene_details_model(api_names: tuple[str, ...]) -> type[Draft]:
    """Scene enrichment draft whose `apis` may only name APIs of the catalogue."""
    api = Literal[api_names]  # type: ignore[valid-type]
    return create_model(
        "SceneDetails",
        __base__=Draft,
        expected_response=(str, Field(min_length=10, max_length=600)),
        context=(str, Field(min_length=10, max_length=600)),
        apis=(list[api], Field(min_length=1, max_length=3)),
    )


@cache
def revisit_details_model(api_names: tuple[str, ...]) -> type[Draft]:
    """A revisit: the follow-up need itself (not a copy of the earlier description), then the details."""
    api = Literal[api_names]  # type: ignore[valid-type]
    return create_model(
        "RevisitDetails",
        __base__=Draft,
        description=(str, Field(min_length=10, max_length=400)),
        expected_response=(str, Field(min_length=10, max_length=600)),
        context=(str, Field(min_length=10, max_length=600)),
        apis=(list[api], Field(min_length=1, max_length=3)),
    )


class QueryDraft(Draft):
    personalized_query: str = Field(min_length=5, max_length=600)


class FollowDraft(Draft):
    """The user's next message in a session's conversation."""

    message: str = Field(min_length=2, max_length=600)


class NeutralDraft(Draft):
    neutralized_query: str = Field(min_length=5, max_length=600)


class Answerability(Draft):
    answerable: bool
    reason: str = Field(max_length=300)


class QualityScore(Draft):
    score: int = Field(ge=1, le=10)
    reason: str = Field(max_length=300)
