"""Build configuration. Holds no secret: the API key comes from the environment only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from personaloom.schemas.filtering import FilterConfig

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DATASET_RULE = "use letters, digits, '.', '_' or '-' (no path characters), at most 64"
# A seed is stored as an int64 (manifest, Parquet, Prefect's JSON parameters): larger ones cannot be recorded.
MAX_SEED = 2**63 - 1


def dataset_name_problem(name: str) -> str | None:
    """Why `name` cannot name a dataset folder (None: it can). The one rule every command applies: a
    name is one plain folder under --out, never a path that leaves it (`..`, `/`) or an empty one."""
    if not DATASET_NAME.match(name) or name in {".", ".."}:
        return DATASET_RULE
    return None


# Call role → the LLMConfig field naming its own model; every other role (writer, chatbot, tool, memory)
# uses `model`. A judge should not grade its own model's writing, and the simulated user should not be
# the model it talks to.
ROLE_MODELS: dict[str, str] = {"simulator": "user_model", "judge": "judge_model"}


def has_credentials(url: str) -> bool:
    """A URL with user:password@ (a secret, like the key)."""
    return "@" in urlsplit(url).netloc


CREDENTIALS_IN_URL = (
    "must not hold credentials (user:password@): they would be stored with the dataset and its runs; "
    "give the key in OPENAI_API_KEY"
)


class LLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("gpt-4o-mini", description="model name sent to the endpoint")
    user_model: str | None = Field(
        None, description="model of the user simulator (calls of role 'simulator'); default: model"
    )
    judge_model: str | None = Field(
        None, description="model of the judges and checks (calls of role 'judge'); default: model"
    )
    base_url: str | None = Field(
        None, description="OpenAI-compatible URL; default $OPENAI_BASE_URL, else the embedded model"
    )
    concurrency: int = Field(32, ge=1, le=1024, description="LLM calls in flight at once")
    rpm: int | None = Field(None, ge=1, description="requests per minute limit")
    tpm: int | None = Field(None, ge=1, description="tokens per minute limit")
    timeout: float = Field(
        60.0, gt=0, description="seconds a request may take in all (connect, wait, read) before it is retried"
    )
    max_retries: int = Field(6, ge=0, le=20)
    shutdown_error_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="stop the run when more than this share of the recent calls failed after every retry "
        "(NeMo Data Designer's early shutdown); 1: never",
    )
    shutdown_error_window: int = Field(
        10, ge=1, description="calls that must have completed before the share of failed calls is watched"
    )
    temperature: float = Field(0.8, ge=0, le=2)
    redraws: int = Field(
        1,
        ge=0,
        le=4,
        description="draw an answer again (another sampling seed) at most this many times while a code-owned "
        "check stage 5 applies flags it (a prompt example copied, the wrong language); 0: never",
    )
    structured_output: Literal["json_schema", "json_object"] = Field(
        "json_schema", description="json_schema: OpenAI form; json_object: llama.cpp form with a 'schema' key"
    )
    max_field_chars: int | None = Field(
        None,
        ge=8,
        description="cap every string in the requested JSON schema (grammar-constrained small models)",
    )
    max_list_items: int = Field(
        4, ge=1, description="cap every list in the requested schema when max_field_chars is set"
    )
    max_tokens: int | None = Field(
        None, ge=1, description="stop the run once this many tokens were spent (this run)"
    )
    max_cost: float | None = Field(
        None, gt=0, description="stop the run once this many USD were spent (this run)"
    )
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="extra or overriding USD per 1M tokens (input, output) by model"
    )
    prompt_set: Literal["default", "small"] = Field(
        "default", description="'small' uses the short, completion-friendly prompts for small local models"
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http(s) URL such as http://localhost:8000/v1")
        if v is not None and has_credentials(v):
            raise ValueError(CREDENTIALS_IN_URL)
        return v

    def model_for(self, role: str) -> str:
        """The model a call of this role is sent to, on the same endpoint (see ROLE_MODELS)."""
        override = ROLE_MODELS.get(role)
        return (getattr(self, override) if override else None) or self.model

    def models(self) -> list[str]:
        """Every model the run may call: `model` first, then the role models that differ."""
        return list(dict.fromkeys([self.model, *(self.model_for(r) for r in ROLE_MODELS)]))


class DedupLevels(BaseModel):
    """Persona-aware dedup thresholds (rapidfuzz ratio, 0-100); queries use `filter.near_dup.threshold`."""

    model_config = ConfigDict(extra="forbid")

    persona_threshold: float = Field(90.0, ge=0, le=100, description="name + occupation + locale + values")
    scene_threshold: float = Field(85.0, ge=0, le=100, description="title + description, within one persona")
    scenario_threshold: float = Field(
        85.0,
        ge=0,
        le=100,
        description="titles (token_sort_ratio) across personas and the catalogue: the same scenario, counted "
        "once in the manifest's scenarios (nothing is dropped)",
    )


SESSION_TOKENS = 800  # a --context-target build plans a session per this many tokens of the target


class ConversationConfig(BaseModel):
    """Stage 4: how each session's conversation goes and what the user may reveal in it."""

    model_config = ConfigDict(extra="forbid")

    user_turns: int = Field(
        2, ge=1, le=12, description="user messages per session (each answered by a plain assistant)"
    )
    reveals_per_session: int = Field(
        2, ge=0, le=6, description="preferences in force code lets the user reveal in one session"
    )
    explicit_share: float = Field(
        0.0, ge=0, le=1, description="share of planned reveals the user may state outright (else implicit)"
    )
    others_share: float = Field(
        0.25, ge=0, le=1, description="share of sessions where the user mentions another person's preference"
    )
    reveal_min_accuracy: float = Field(
        0.75,
        ge=0,
        le=1,
        description="trust the reveal judge only at this balanced accuracy on seeds/reveal_calibration.csv "
        "(else reveals stay unconfirmed); 0: do not ask it",
    )
    context_target: int | None = Field(
        None,
        ge=1000,
        le=2_000_000,
        description="tokens (text/tokens.py: a real tokenizer where it installs, else 4 characters each) "
        "of each persona's own history to reach, e.g. "
        f"32000: more sessions (one per {SESSION_TOKENS} tokens unless the sessions are given) and longer "
        "conversations with side topics, until every persona's history holds it",
    )


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("personas", description="dataset name: letters, digits, '.', '_', '-'")
    personas: int = Field(200, ge=1, le=1_000_000)
    scenes_per_persona: int = Field(20, ge=1, le=200)
    revisit_share: float = Field(
        0.2, ge=0, le=0.5, description="share of sessions that revisit an earlier topic"
    )
    changes_per_persona: int = Field(2, ge=0, le=10, description="dated preference changes over the sessions")
    fine_preferences: int = Field(
        20,
        ge=0,
        le=200,
        description="fine-grained preferences planted per persona from seeds/fine_preferences.csv (as many "
        "as fit the person when fewer do); 0: none",
    )
    fine_changes_per_persona: int = Field(
        3, ge=0, le=20, description="dated changes of fine-grained preferences over the sessions"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="sampler seed")
    locales: list[str] | None = Field(
        None,
        min_length=1,
        description="sample only these locales of seeds/locales.csv, e.g. en_US, de_DE (default: all)",
    )
    languages: list[str] | None = Field(
        None,
        min_length=1,
        description="only personas who write to an assistant in these ISO 639-1 languages, e.g. en, zh "
        "(seeds/language_codes.csv; default: every language the locales speak)",
    )
    shard_size: int = Field(50, ge=1, description="personas per shard (one Prefect task per stage and shard)")
    expand_hints: bool = Field(
        True, description="let the LLM expand seed hints self-instruct style (stage 1)"
    )
    answerability: bool = Field(True, description="stage 5 LLM answerability check")
    judge_min_accuracy: float = Field(
        0.75,
        ge=0,
        le=1,
        description="apply the answerability judge's verdicts only when its balanced accuracy on "
        "seeds/judge_calibration.csv reaches this (else rows are kept, marked 'answerability'); 0: always",
    )
    probes: bool = Field(True, description="build evaluation items (probes/) from the kept sessions")
    probes_per_checkpoint: int = Field(
        2,
        ge=1,
        le=7,
        description="items planned at each kept session of a persona (types by seeded rotation)",
    )
    probe_blind_judge: bool = Field(
        True,
        description="ask the judge model each item without the history (two option orders); items it "
        "answers above chance are rejected as probe_blind_answerable",
    )
    quality_min: int | None = Field(
        None, ge=1, le=10, description="stage 5 LLM quality score: reject below this (off when unset)"
    )
    llm: LLMConfig = Field(default_factory=LLMConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupLevels = Field(default_factory=DedupLevels)

    @model_validator(mode="after")
    def _sessions_for_the_target(self) -> BuildConfig:
        """A context target without given sessions plans enough of them (a user's life is many sessions)."""
        target = self.conversation.context_target
        if target is not None and "scenes_per_persona" not in self.model_fields_set:
            self.scenes_per_persona = min(200, max(self.scenes_per_persona, -(-target // SESSION_TOKENS)))
        return self

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if problem := dataset_name_problem(v):
            raise ValueError(problem)
        return v


class RunPaths(BaseModel):
    """Where a build reads and writes; not part of the dataset's identity."""

    out: Path = Path("output")
    cache_dir: Path | None = None

    @property
    def cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.out / ".cache"
