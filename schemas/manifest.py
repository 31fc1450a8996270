"""The manifest written beside every dataset version."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from personaloom.schemas.config import BuildConfig


class StageUsage(BaseModel):
    """LLM accounting for one stage."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    errors: int = Field(
        0, description="requests that failed after every retry (the endpoint, not the answer)"
    )
    retries: int = 0
    repairs: int = 0
    redraws: int = Field(0, description="answers drawn again because a code-owned check flagged them")
    flagged: int = Field(0, description="answers still flagged after the redraws (stage 5 drops their rows)")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0


class KeptCost(BaseModel):
    """What one kept row cost: the usage of the stages that made it, divided by the rows kept."""

    kept: int = Field(description="rows kept that this build generated (a grown version: its new personas')")
    stages: list[str] = Field(description="the stages whose usage is divided")
    calls: float | None = Field(description="LLM calls per kept row (None: nothing kept)")
    cache_hits: float | None = Field(None, description="cache hits per kept row")
    tokens: float | None = Field(description="prompt + completion tokens per kept row")
    cost_usd: float | None = Field(description="USD per kept row (the model's price; 0 when unpriced)")


# what each kept row's cost divides: a session (a dataset row) costs the stages that make sessions, an item
# (a probe) the probes stage, and an item of the whole build every stage (an item needs its sessions)
KEPT_COST_KINDS = ("session", "item", "item_whole_build")


def kept_costs(usage: dict[str, StageUsage], sessions: int, items: int) -> dict[str, KeptCost]:
    """Calls, tokens and USD per kept session and per kept item, from the usage recorded per stage."""
    making_sessions = [s for s in usage if s != "probes"]
    spans = {
        "session": (making_sessions, sessions),
        "item": (["probes"] if "probes" in usage else [], items),
        "item_whole_build": (list(usage), items),
    }
    out = {}
    for kind, (stages, kept) in spans.items():
        used = [usage[s] for s in stages]

        def per(total: float, kept: int = kept) -> float | None:
            return round(total / kept, 6) if kept else None

        out[kind] = KeptCost(
            kept=kept,
            stages=stages,
            calls=per(sum(u.calls for u in used)),
            cache_hits=per(sum(u.cache_hits for u in used)),
            tokens=per(sum(u.prompt_tokens + u.completion_tokens for u in used)),
            cost_usd=per(sum(u.cost_usd for u in used)),
        )
    return out


class StageCount(BaseModel):
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    fallback_rows: int = Field(0, description="rows with at least one field filled from seed attributes")


class CallInfo(BaseModel):
    """A declared LLM call as the run used it (see personaloom.llm.calls)."""

    template_hash: str
    response: str = Field(description="response model name, 'text', or 'computed per input'")
    max_tokens: int | None = Field(description="None when computed per input")
    role: str
    temperature: float | None = Field(description="None: the run's llm.temperature")
    model: str | None = Field(
        None, description="the model the call's role is sent to (llm.model, user_model or judge_model)"
    )
    usage_key: str
    variables: list[str]
    check: str | None = Field(None, description="the code-owned check its answers must pass, else redrawn")


class ConversationStats(BaseModel):
    """Stage 4's sessions as the version holds them (kept rows): turns, own-history size, reveals.

    Tokens are counted by `tokenizer` (text/tokens.py: Gemma 3's where the `local` extra installs, else
    an estimate of 4 characters a token). Of the implicit reveals code asked for, `implicit_stated`
    came out stated outright (code's check), and of the rest the judge confirmed `implicit_confirmed` of
    `implicit_judged` (0 judged: the judge was not trusted, the reveals count unconfirmed).
    """

    sessions: int
    turns_per_session: float
    user_turns_per_session: float
    history_tokens_min: int = Field(description="the shortest own history of a persona (all its sessions)")
    history_tokens_median: int
    history_tokens_max: int
    preferences_per_persona: float = Field(description="preferences a user can reveal, in force at the end")
    planned_reveals: int
    planned_traps: int = Field(description="mentions of someone else's preference (not evidence)")
    implicit_asked: int
    implicit_stated: int
    implicit_confirmed: int
    implicit_judged: int
    evidence_marks: int = Field(description="user-turn marks that count as evidence for probes")
    traps_taken_as_user: int = Field(description="others' preferences the judge read as the user's")
    tokenizer: str = Field("estimate (4 characters a token)", description="what counted the tokens")

    def implicit_share(self) -> float | None:
        """Share of the asked-implicit reveals judged inferable without being stated (None: not judged)."""
        return round(self.implicit_confirmed / self.implicit_judged, 4) if self.implicit_judged else None


class JudgeCalibration(BaseModel):
    """A judge's verdicts on items whose answer code knows (personaloom.stages.calibration)."""

    call: str
    items: int
    right_on_answerable: int
    answerable: int
    right_on_unanswerable: int
    unanswerable: int
    invalid: int = Field(description="answers that were no verdict (counted as misses)")
    balanced_accuracy: float = Field(description="mean of the hit rates on either kind of item")
    min_accuracy: float
    trusted: bool = Field(description="its verdicts were applied to the rows")

    def summary(self) -> str:
        if self.call == "queries/reveal":  # its items are revealed (implicit or explicit) or absent
            verdict = "trusted" if self.trusted else "NOT trusted: reveals kept unconfirmed"
            kinds = ("revealed", "absent")
        else:
            verdict = "trusted" if self.trusted else "NOT trusted: rows kept unjudged, marked 'answerability'"
            kinds = ("answerable", "unanswerable")
        return (
            f"{self.call} judge {verdict} (balanced accuracy {self.balanced_accuracy:.2f}, needs "
            f"{self.min_accuracy:.2f}: right on {self.right_on_answerable}/{self.answerable} {kinds[0]} and "
            f"{self.right_on_unanswerable}/{self.unanswerable} {kinds[1]} calibration items)"
        )


class StageReport(BaseModel):
    """One row of the per-stage table: what the CLI, the dataset card and the Prefect artifact show."""

    stage: str
    rows_in: int
    rows_out: int
    rejected: int
    fallback_rows: int
    llm_calls: int
    cache_hits: int
    tokens: int
    cost_usd: float
    seconds: float


class ShardInfo(BaseModel):
    path: str
    rows: int
    bytes: int
    sha256: str
    inherited_from: str | None = Field(
        None,
        description="the version whose build wrote this shard, when this version inherits it unchanged "
        "(a hard link to that version's file); None: written by this version's build",
    )


class PersonaSpan(BaseModel):
    """Persona indices [first, end): row i is persona i of the dataset's seed (`row_seed(seed, i)`)."""

    first: int = Field(ge=0)
    end: int = Field(ge=0)

    @property
    def count(self) -> int:
        return self.end - self.first


class ScenarioStats(BaseModel):
    """The build's distinct scenarios (personaloom.stages.scenarios): catalogue scenes its sessions used, plus
    the LLM-written scenarios no other written scene or catalogue scene repeats (titles alike >= threshold,
    across personas). Revisits are follow-ups of a counted scenario and count in none of these."""

    distinct: int = Field(description="from_catalogue + written")
    from_catalogue: int = Field(
        description="catalogue scenes used, as common scenes or repeated by a written one"
    )
    written: int = Field(description="distinct LLM-written scenarios that are no catalogue scene")
    catalogue_size: int
    sessions: int = Field(description="sessions counted (revisits excluded)")
    written_sessions: int = Field(description="sessions on an LLM-written (persona-specific) scene")
    matched_catalogue: int = Field(description="written sessions whose title repeats a catalogue scene's")
    category_fallbacks: int = Field(
        description="written sessions whose category was none of the list: counted under 'other'"
    )
    threshold: float = Field(
        description="rapidfuzz token_sort_ratio of normalized titles (dedup.scenario_threshold)"
    )
    by_category: dict[str, int] = Field(description="distinct scenarios per category (every category listed)")
    catalogue_by_category: dict[str, int] = Field(description="of which from the catalogue")
    sessions_by_category: dict[str, int] = Field(description="counted sessions per category")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    version: str
    parent: str | None
    created_at: datetime
    code_version: str
    model: str
    endpoint: str = Field(description="endpoint host, credentials removed")
    seed: int
    config: BuildConfig
    prompt_hashes: dict[str, str]
    calls: dict[str, CallInfo] = Field(
        default_factory=dict, description="every declared LLM call of the build"
    )
    counts: dict[str, StageCount]
    usage: dict[str, StageUsage]
    per_kept: dict[str, KeptCost] = Field(
        default_factory=dict,
        description="calls, tokens and USD per kept session (dataset row) and per kept item (probe): "
        "session, item (the probes stage), item_whole_build (every stage); from `usage` and the rows "
        "this build kept (absent: a version before them)",
    )
    rejection_reasons: dict[str, int]
    judges: dict[str, JudgeCalibration] = Field(
        default_factory=dict, description="each judge's calibration, by call (absent: not calibrated)"
    )
    probe_baselines: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per type (and 'all'): accuracy of each blind rule that never reads the history, the "
        "judge model asked without it (blind_judge), chance, and the items",
    )
    probe_yield: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="per type: planned, kept, and rejected per reason",
    )
    conversations: ConversationStats | None = Field(
        None, description="the sessions' conversations and reveals (absent: a version before them)"
    )
    invariants: dict[str, int] = Field(
        default_factory=dict,
        description="violations per ground-truth invariant (personaloom.dataset.audit): all 0",
    )
    scenarios: ScenarioStats | None = Field(
        None,
        description="distinct scenarios of the scenes table, per category (None: not counted)",
    )
    languages: dict[str, int] = Field(
        default_factory=dict,
        description="dataset rows per language found by language ID (fastText lid.176) in their personalized "
        "query, most first",
    )
    stage_seconds: dict[str, float] = Field(
        description="seconds per stage, summed over shards (shards overlap)"
    )
    timings: dict[str, float] = Field(
        default_factory=dict, description="wall seconds: endpoint_start, generate"
    )
    shards: list[ShardInfo]
    identity: str | None = Field(
        None,
        description="the build's run key (content settings, seeds, prompts of the declared calls, code): "
        "a build with the latest version's identity publishes nothing",
    )
    content_identity: str | None = Field(
        None,
        description="the identity a fresh build of this version's personas and settings has (a grown "
        "version's identity also names its parent): such a build of the latest version publishes nothing",
    )
    seeds_digest: str | None = Field(None, description="digest of the seed tables the build sampled from")
    mode: Literal["build", "grow", "rebuild"] = Field(
        "build",
        description="build: every persona generated; grow: parent's rows + new personas; "
        "rebuild: the parent's personas regenerated with other settings",
    )
    built: PersonaSpan | None = Field(
        None, description="persona indices this version's build generated (a grown version inherits the rest)"
    )

    def stage_report(self) -> list[StageReport]:
        """The per-stage table, one row per pipeline stage, in pipeline order."""
        rows = []
        for stage, c in self.counts.items():
            u = self.usage.get(stage, StageUsage())
            rows.append(
                StageReport(
                    stage=stage,
                    rows_in=c.rows_in,
                    rows_out=c.rows_out,
                    rejected=c.rejected,
                    fallback_rows=c.fallback_rows,
                    llm_calls=u.calls,
                    cache_hits=u.cache_hits,
                    tokens=u.prompt_tokens + u.completion_tokens,
                    cost_usd=round(u.cost_usd, 6),
                    seconds=round(self.stage_seconds.get(stage, 0.0), 3),
                )
            )
        return rows

    @property
    def rows(self) -> int:
        """Rows of the dataset table (what users load)."""
        return self.counts["filter"].rows_out if "filter" in self.counts else 0
