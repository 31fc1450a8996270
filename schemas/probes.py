"""Evaluation items built from the ground truth (PersonaMem-style probes) and their evaluation results."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from personaloom.schemas.config import LLMConfig
from personaloom.schemas.manifest import ShardInfo, StageUsage
from personaloom.schemas.records import PersonaPath, Record

# PersonaMem's question types, by their own names, so its harness reads our items unchanged.
ProbeType = Literal[
    "recalling_facts_mentioned_by_the_user",
    "recalling_the_latest_user_preferences",
    "tracking_the_full_sequence_of_preference_updates",
    "recalling_the_reasons_behind_previous_updates",
    "recommendation_aligned_with_users_latest_preferences",
    "identifying_new_things_not_mentioned_by_the_user",
    "generalizing_past_reasons_in_memory_to_new_scenarios",
]
# What an option stands for. Written today: correct (the value in force), outdated (the value before the
# change), other_persona (another user's value of the same field), other_change (the reason behind another
# of this user's changes), reordered (the user's own sequence out of order), mentioned (a thing the user
# did mention, for "new things"), alternative (a value of the same field from the seed tables, when a build
# has too few other users), someone_else (a value the user mentioned as another person's: a trap for a
# reader who matches words without knowing whose preference it was). generic, contradiction and
# fabricated: earlier versions' items only.
OptionKind = Literal[
    "correct",
    "outdated",
    "other_persona",
    "other_change",
    "reordered",
    "mentioned",
    "alternative",
    "someone_else",
    "generic",
    "contradiction",
    "fabricated",
]


class ProbeItem(Record):
    """One multiple-choice item: a user message at a checkpoint and four full assistant replies.

    Code owns the key: `truth` (the value in force at the checkpoint), which option embodies it
    (`answer`), what each distractor embodies (`option_kinds`), and which sessions revealed it.
    """

    probe_id: str
    persona_id: str
    checkpoint_session: int
    type: ProbeType
    path: PersonaPath = Field(description="the persona field the item probes")
    question: str = Field(description="the user's message at the checkpoint")
    options: list[str] = Field(min_length=4, max_length=4)
    answer: int = Field(ge=0, le=3)
    option_kinds: list[OptionKind] = Field(min_length=4, max_length=4)
    option_values: list[str] = Field(
        default_factory=list, description="the value code put into each option (empty: an earlier version)"
    )
    truth: str = Field(description="the ground-truth value in force that the correct reply follows")
    outdated: str = Field("", description="the value before the latest change, when the item has one")
    language: str = Field("en", description="the user's language of interaction (question and options)")
    evidence_sessions: list[int] = Field(description="kept sessions up to the checkpoint that reveal it")
    evidence_turns: list[str] = Field(
        default_factory=list, description="turn ids (Turn.turn_id) in those sessions that reveal it"
    )
    distance_sessions: int = Field(description="sessions from the last evidence to the checkpoint")
    distance_tokens: int = Field(description="approximate tokens of history between evidence and checkpoint")
    seed: int = Field(description="shuffles the options; regenerates the item alone")
    blind_judge: float | None = Field(
        None, description="share of option orders in which the judge model, without history, picked the key"
    )


class EvalResult(Record):
    """One item answered by one model (or a reference: `oracle`, `blind:<rule>`)."""

    run: str
    model: str
    probe_id: str
    persona_id: str
    type: str
    mode: Literal["mcq", "open"]
    distance_sessions: int
    context_tokens: int
    answer: int
    predicted: int | None = Field(description="the option chosen; None when the reply named none")
    correct: bool
    raw: str = ""


class EvalConfig(BaseModel):
    """`personaloom evaluate`: which version's probes, which model, how."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    version: str | None = None
    llm: LLMConfig = Field(default_factory=lambda: LLMConfig(temperature=0.0), validate_default=True)
    mode: Literal["mcq", "open"] = "mcq"
    context_tokens: int | None = Field(None, ge=64, description="cap or pad each item's history to this size")
    context: Literal["history", "none", "base-persona"] = Field(
        "history",
        description="history: the user's sessions; none: the question and options only (a blind reader); "
        "base-persona: the persona as it was before any change (a stale memory), no sessions",
    )
    personas: int | None = Field(None, ge=1, description="only the first N personas' items")
    shard_size: int = Field(200, ge=1, description="items per task (one results part each)")
    run: str | None = Field(
        None, description="run folder name under eval/ (default: e-<model>-<mode>-<context>-<hash>)"
    )

    @field_validator("llm")
    @classmethod
    def _greedy(cls, v: LLMConfig) -> LLMConfig:
        """Scored at temperature 0 unless one is given: a score, not one sample of the model's answers."""
        if "temperature" in v.model_fields_set:
            return v
        return v.model_copy(update={"temperature": 0.0})

    @field_validator("run")
    @classmethod
    def _run(cls, v: str | None) -> str | None:
        """A folder of its own under eval/, never a path out of it."""
        from personaloom.schemas.config import dataset_name_problem

        if v is not None and (problem := dataset_name_problem(v)):
            raise ValueError(problem)
        return v


class EvalManifest(BaseModel):
    dataset: str
    version: str
    run: str
    created_at: datetime
    code_version: str
    model: str
    endpoint: str
    config: EvalConfig
    items: int
    accuracy: dict[str, float] = Field(
        description="overall accuracy per row: the model, oracle, each blind rule, and chance"
    )
    usage: dict[str, StageUsage]
    shards: list[ShardInfo]
