"""Every record the pipeline reads or writes.

The Parquet schemas derive from these (personaloom.schemas.arrow).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from personaloom.schemas.fine import FINE_PREFIX, load_fine_table

# Dotted persona paths a query may reveal; the replay scores learning against them.
PERSONA_PATHS: tuple[str, ...] = (
    "Demographics.Age",
    "Demographics.Gender",
    "Demographics.Nationality",
    "Demographics.Language",
    "Demographics.Career_Information",
    "Personality.Extraversion_or_Introversion",
    "Personality.Sensing_or_Intuition",
    "Personality.Thinking_or_Feeling",
    "Personality.Judging_or_Perceiving",
    "Personality.Values_and_Interests",
    "Pattern.Behavior_Engagement_Pattern",
    "Pattern.Usage_Pattern",
    "Pattern.Emotion_Pattern",
    "Pattern.Purchase_Pattern",
    "Preference.Preferred_Styles",
    "Preference.Preferred_Formats",
    "Preference.Preferred_Workflows",
    "Communication.formality",
    "Communication.verbosity",
    "Communication.proactivity",
    "Communication.domain_vocabulary",
    "Communication.emotional_tone",
)
FixedPath = Literal[PERSONA_PATHS]  # type: ignore[valid-type]


def is_persona_path(path: str) -> bool:
    """One of PERSONA_PATHS, or `Fine.<id>` with an id of seeds/fine_preferences.csv."""
    if path.startswith(FINE_PREFIX):
        return path[len(FINE_PREFIX) :] in load_fine_table()
    return path in PERSONA_PATHS


def _persona_path(path: str) -> str:
    if not is_persona_path(path):
        raise ValueError(f"not a persona path: {path!r} (one of PERSONA_PATHS or Fine.<id of the table>)")
    return path


def _pairs(v: Any) -> Any:
    """Parquet holds the map as {key, value} structs (pyarrow and polars read them back as dicts)."""
    if v is None:
        return {}
    if isinstance(v, list):
        return dict((p["key"], p["value"]) if isinstance(p, dict) else tuple(p) for p in v)
    return v


def _entries(v: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": x} for k, x in v.items()]


# id → text; in Parquet (and every dump) a list of {key, value} in the dict's order
FineMap = Annotated[dict[str, str], BeforeValidator(_pairs), PlainSerializer(_entries)]

# a profile field, or a fine-grained preference `Fine.<id>` (personaloom.schemas.fine)
PersonaPath = Annotated[str, AfterValidator(_persona_path)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- stage 1: seeds


ChangeOp = Literal["step", "switch", "replace", "add", "remove"]


class PlannedChange(Record):
    """A life-long drift event planned by code at stage 1 (stages/drift.py), eligible for this person.

    `step`/`switch` set a communication-style value (`target`), `add`/`remove` edit a list field
    (`target`: the item to add), `replace` gives a narrative field a new value the LLM writes toward
    `direction`. `event` is the life event that motivates it.
    """

    kind: str
    field: PersonaPath
    op: ChangeOp
    at_session: int = Field(ge=1)
    direction: str
    event: str
    target: str | None = None


Employment = Literal[
    "employed", "self_employed", "student", "apprentice", "retired", "homemaker", "unemployed"
]
LifeStage = Literal["student", "young_adult", "family", "midlife", "pre_retirement", "retired"]


class SeedRow(Record):
    persona_id: str
    index: int
    seed: int = Field(description="per-row sampler seed: regenerates this skeleton alone")
    locale: str
    country: str
    nationality: str
    languages: list[str] = Field(description="the first language, then additional ones (seeds/languages.csv)")
    interaction_language: str | None = Field(
        None,
        description="ISO 639-1 code of the language this person writes to an assistant in, one of "
        "`languages` (seeds/language_codes.csv); every generated text of the persona is in it "
        "(None: sampled before interaction languages existed, English)",
    )
    name: str = Field(description="in the locale's own script (given_names.csv/family_names.csv `native`)")
    name_romanized: str | None = Field(
        None, description="the name in Latin script (the same as `name` where the locale writes Latin script)"
    )
    gender: str
    age: int
    occupation: str
    sector: str
    employment: Employment = Field(description="work status; the occupation is the job, study or former job")
    life_stage: LifeStage = Field(description="from age and employment (stages.seed.life_stage_for)")
    domain_vocabulary: list[str]
    mbti: str = Field(pattern=r"^[EI][SN][TF][JP]$")
    values_interests: list[str]
    formality: str
    verbosity: str
    proactivity: str
    emotional_tone: str
    hint: str
    expanded_hint: str | None = None
    start_date: date
    session_gaps_days: list[int]
    planned_changes: list[PlannedChange]
    fine: FineMap = Field(
        default_factory=dict,
        description="fine-grained preferences drawn by code (personaloom.stages.drift.plan_fine)",
    )
    planned_fine: list[PlannedChange] = Field(
        default_factory=list, description="changes of fine preferences (op switch, `target` the new one)"
    )
    fallback_fields: list[str] = Field(default_factory=list)
    raw_output: str | None = None


# ---------------------------------------------------------------- stage 2: personas


class Demographics(Record):
    Name: str
    Age: int
    Gender: str
    Nationality: str
    Language: list[str]
    Career_Information: str
    Interaction_Language: str = Field(
        "en", description="ISO 639-1 code of the language the persona writes in (the skeleton's)"
    )


class Personality(Record):
    Extraversion_or_Introversion: Literal["Extraversion", "Introversion"]
    Sensing_or_Intuition: Literal["Sensing", "Intuition"]
    Thinking_or_Feeling: Literal["Thinking", "Feeling"]
    Judging_or_Perceiving: Literal["Judging", "Perceiving"]
    Values_and_Interests: list[str]


class Pattern(Record):
    Behavior_Engagement_Pattern: str
    Usage_Pattern: str
    Emotion_Pattern: str
    Purchase_Pattern: str


class Preference(Record):
    Preferred_Styles: str
    Preferred_Formats: str
    Preferred_Workflows: str


class CommunicationStyle(Record):
    formality: str
    verbosity: str
    proactivity: str
    domain_vocabulary: list[str]
    emotional_tone: str


class PreferenceChange(Record):
    """The user changes over the sessions: from `effective_session` on, `field` reads `after`.

    Code owns the bookkeeping: `before` is exactly the value in force before the change (the base persona
    plus every earlier change), `after` is the value from then on (lists read "a, b, c"; `added` and
    `removed` name the items a list change touched). The LLM writes only a narrative `after` and `reason`.
    """

    date: date
    effective_session: int
    field: PersonaPath
    before: str
    after: str
    reason: str
    kind: str = ""
    op: ChangeOp = "replace"
    event: str = ""
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)


class Persona(Record):
    Demographics: Demographics
    Personality: Personality
    Pattern: Pattern
    Preference: Preference
    Communication: CommunicationStyle
    Changes: list[PreferenceChange]
    Fine: FineMap = Field(
        default_factory=dict,
        description="fine-grained preferences planted by code: id of seeds/fine_preferences.csv → the "
        "alternative held (before any change); path `Fine.<id>`",
    )


class PersonaRecord(Record):
    persona_id: str
    seed: int
    persona: Persona
    fallback_fields: list[str] = Field(
        default_factory=list,
        description="fields filled from seed attributes because the LLM output was empty or invalid",
    )
    raw_output: str | None = Field(default=None, description="raw LLM text when it failed validation")


# ---------------------------------------------------------------- stage 3: scenes


class ApiArgument(Record):
    name: str
    type: Literal["string", "integer", "number", "boolean"]
    description: str
    required: bool


class ApiSpec(Record):
    name: str
    description: str
    arguments: list[ApiArgument]


class CatalogueScene(Record):
    scene_id: str
    category: str
    title: str
    description: str
    apis: list[str]


SceneKind = Literal["common", "specific", "revisit"]


class Scene(Record):
    scene_id: str
    persona_id: str
    session_index: int
    timestamp: datetime
    kind: SceneKind
    title: str
    description: str
    expected_response: str
    context: str
    apis: list[ApiSpec]
    catalogue_id: str | None = None
    category: str | None = Field(
        default=None,
        description="scenario category (stages/scenarios.py): the catalogue's for a common scene, the "
        "LLM's checked choice for a specific one ('other' when it named none), the origin's for a revisit",
    )
    revisits: str | None = Field(
        default=None, description="scene_id of the earlier session this one revisits"
    )
    fallback_fields: list[str] = Field(default_factory=list)
    raw_output: str | None = None


# ---------------------------------------------------------------- stage 4: queries


RevealMode = Literal["implicit", "explicit"]
Speaker = Literal["user", "assistant"]


class PlannedReveal(Record):
    """What code lets the user reveal in one session, and how: the simulator weaves it in, code checks it.

    `key` is a persona field (`Preference.Preferred_Formats`), or `<field>#reason` for why the latest change
    of that field happened. `who="others"` plants a trap: the user talks about someone else's preference
    (`value` is *not* the user's), and nothing the user says about it is evidence about the user.
    """

    key: str
    value: str
    mode: RevealMode = "implicit"
    who: Literal["self", "others"] = "self"


class RevealMark(Record):
    """One planned reveal as it came out in one user turn.

    `stated`: code found the value's content words in the turn (an explicit statement, whatever was asked);
    `confirmed`: the calibrated reveal judge (temperature 0) found the value inferable from this turn —
    None when the judge was not trusted or not asked. Evidence is a confirmed mark of the user's own
    (who="self") preference, or, with an untrusted judge, any self mark (recorded as such in the manifest).
    """

    key: str
    mode: RevealMode
    who: Literal["self", "others"] = "self"
    stated: bool = False
    confirmed: bool | None = None


class Turn(Record):
    """One message of a session's conversation, as it was said: the history holds these and nothing else."""

    turn_id: str = Field(description="<query_id>-t<n>, n from 0 in the order said")
    role: Speaker
    content: str
    reveals: list[RevealMark] = Field(default_factory=list, description="user turns: what they revealed")


def evidence_keys(turn: Turn) -> set[str]:
    """The keys a turn is evidence for: the user's own marks the judge did not reject.

    A trusted judge confirms or rejects every mark; an untrusted one leaves them None (unconfirmed), which
    still count, and the manifest's `reveal_judge` says so.
    """
    return {m.key for m in turn.reveals if m.who == "self" and m.confirmed is not False}


class Query(Record):
    query_id: str
    scene_id: str
    persona_id: str
    session_index: int
    personalized_query: str = Field(description="the user's opening message (the first turn)")
    neutralized_query: str
    revealed_fields: list[PersonaPath] = Field(
        description="persona fields some turn of this session is evidence for (see Turn.reveals)"
    )
    turns: list[Turn] = Field(default_factory=list, description="the conversation, the opening included")
    planned_reveals: list[PlannedReveal] = Field(default_factory=list)
    fallback_fields: list[str] = Field(default_factory=list)
    raw_output: str | None = None


# ---------------------------------------------------------------- stage 5 and output


class Rejection(Record):
    stage: str
    row_id: str
    persona_id: str | None = None
    reason: str
    detail: str | None = None
    score: float | None = None
    dup_of: str | None = None
    dup_score: float | None = None
    dup_method: str | None = None
    raw_output: str | None = None


class DatasetRow(Record):
    """What users load: one session of one persona, persona + scene + query joined."""

    persona_id: str
    session_index: int
    timestamp: datetime
    scene_id: str
    query_id: str
    kind: SceneKind
    title: str
    description: str
    expected_response: str
    context: str
    apis: list[ApiSpec]
    revisits: str | None
    personalized_query: str
    neutralized_query: str
    revealed_fields: list[str]
    persona: Persona
    turns: list[Turn] = Field(default_factory=list, description="the session's conversation, as said")
    planned_reveals: list[PlannedReveal] = Field(default_factory=list)
    active_changes: list[PreferenceChange] = Field(description="preference changes in force at this session")
    fallback_fields: list[str]
