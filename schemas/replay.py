"""Replay records: the reference agent's sessions, turns, persona snapshots and metrics.

Parquet via personaloom.schemas.arrow.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from personaloom.schemas.config import LLMConfig
from personaloom.schemas.manifest import ShardInfo, StageUsage
from personaloom.schemas.records import Record

AGENT_KINDS: tuple[str, ...] = (
    "none",
    "demographics-only",
    "golden",
    "learned",
    "learned-rag",
    "rag",
    "persona-agent",
    "vars",
)
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class VarsParams(BaseModel):
    """VARS (arXiv 2603.20939, §3.5-3.6, appendix D, tables 10-13): the paper's values by default.

    s(u_t, m) = s₀(u_t, m) + ⟨z_eff, v_m⟩ with z_eff = β_L·z_L + β_S·z_S (mix "beta"), or the convex mix
    α_mix·z_L + (1-α_mix)·z_S (mix "alpha"); π(m) = softmax(s/τ) over the dense candidates; the top J enter
    the prompt. REINFORCE: A = g_t(r̂_t - b_U); Δz = η·(A/τ)(v_chosen - μ_t); z_L += Δz_L;
    z_S ← (1-λ)z_S + Δz_S; b_U ← (1-α)b_U + α·r̂_t; z_S is reset to 0 at each session.
    """

    model_config = ConfigDict(extra="forbid")

    eta_long: float = Field(1e-2, ge=0, description="η_L, learning rate of the long-term vector z_L")
    eta_short: float = Field(5e-2, ge=0, description="η_S, learning rate of the short-term vector z_S")
    decay: float = Field(0.1, ge=0, le=1, description="λ, decay of z_S between turns: z_S ← (1-λ)z_S + Δz_S")
    baseline_alpha: float = Field(
        0.05, ge=0, le=1, description="α, EMA coefficient of the reward baseline b_U"
    )
    tau: float = Field(1.0, gt=0, description="τ, temperature of the retrieval policy softmax")
    beta_long: float = Field(2.0, ge=0, description="β_L, weight of z_L in z_eff")
    beta_short: float = Field(5.0, ge=0, description="β_S, weight of z_S in z_eff")
    mix: Literal["beta", "alpha"] = Field(
        "beta", description="beta: z_eff = β_L z_L + β_S z_S (the paper); alpha: α_mix z_L + (1-α_mix) z_S"
    )
    mix_alpha: float = Field(0.5, ge=0, le=1, description="α_mix of the convex mix (mix = alpha)")
    top_m: int = Field(3, ge=1, description="J, conditional memory cards that enter the prompt (rerank_topk)")
    dense_top_k: int = Field(64, ge=1, description="K, candidates from dense retrieval (dense_topk)")
    global_cap: int = Field(10, ge=0, description="global preferences injected directly, at most")
    item_dim: int = Field(256, ge=1, description="k, dimension of the item and user vectors")


class PersonaAgentParams(BaseModel):
    """PersonaAgent (arXiv 2506.06254): test-time alignment over the latest `batch` interactions, `iterations`
    rounds of simulate → textual loss → rewrite, after every `every` sessions; `top_k` episodes retrieved."""

    model_config = ConfigDict(extra="forbid")

    batch: int = Field(3, ge=1, description="latest interactions simulated at each alignment (paper: 3)")
    iterations: int = Field(
        3, ge=1, description="alignment rounds per update (paper: gains plateau after about 3)"
    )
    every: int = Field(3, ge=1, description="sessions between alignments")
    top_k: int = Field(3, ge=0, description="episodes retrieved from episodic memory into the prompt")


class ReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    version: str | None = Field(None, description="v3, v0003, 3 or latest")
    agents: list[str] = Field(default_factory=lambda: ["none", "golden", "learned"])
    ks: list[int] = Field(
        default_factory=lambda: [3],
        description="update cadence of `learned` and `learned-rag` (a list sweeps)",
    )
    personas: int | None = Field(None, ge=1, description="replay only the first N personas")
    run: str | None = Field(
        None, description="run folder name [default: derived from the settings, so a re-run resumes]"
    )
    shard_size: int = Field(5, ge=1, description="personas per Prefect task")
    max_user_turns: int = Field(
        3, ge=1, le=3, description="user utterances per session (the paper's cap is 3)"
    )
    max_tool_rounds: int = Field(
        2, ge=0, le=4, description="tool call → result → answer rounds per assistant turn"
    )
    retrieve: int = Field(2, ge=0, description="past sessions retrieved into the prompt (rag, learned-rag)")
    persona_agent: PersonaAgentParams = Field(default_factory=PersonaAgentParams)
    judge: bool = Field(True, description="LLM judge ratings and persona similarity")
    judge_mode: Literal["paper", "reference"] = Field(
        "paper",
        description="paper: AI Persona's rating prompt word for word (persona, query, answer); "
        "reference: the judge also sees the scene and its reference answer",
    )
    pairwise: list[str] | None = Field(
        None,
        description="agent pairs 'A:B' whose first answers the judge compares on every session, in both "
        "orders (Fig. 4) [default: each learned-kK against golden, when golden runs]; [] for none",
    )
    embedding_model: str | None = Field(
        None,
        description="embed memories with this model of the endpoint's /embeddings API [default: an offline "
        "hashing embedder]",
    )
    vars: VarsParams = Field(default_factory=VarsParams)
    llm: LLMConfig = Field(default_factory=LLMConfig)

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in AGENT_KINDS]
        if bad or not v:
            raise ValueError(
                f"unknown agent {', '.join(bad) or '(none given)'}: choose from {', '.join(AGENT_KINDS)}"
            )
        return list(dict.fromkeys(v))

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("k must be a positive integer (or a comma list such as 1,3,5)")
        return sorted(set(v))

    @field_validator("run")
    @classmethod
    def _run(cls, v: str | None) -> str | None:
        if v is not None and not RUN_NAME.match(v):
            raise ValueError("use letters, digits, '.', '_' or '-' (no path characters), at most 64")
        return v

    @model_validator(mode="after")
    def _pairs(self) -> ReplayConfig:
        names = set(self.agent_names())
        for a, b in self.pairwise_pairs():
            if a == b or a not in names or b not in names:
                known = ", ".join(sorted(names))
                raise ValueError(f"pairwise {a}:{b}: both must be agents of this run and differ ({known})")
        return self

    def pairwise_pairs(self) -> list[tuple[str, str]]:
        """The (A, B) pairs compared pair-wise; by default every learned-kK against golden (Fig. 4)."""
        if self.pairwise is None:
            names = self.agent_names()
            return [(n, "golden") for n in names if n.startswith("learned-k")] if "golden" in names else []
        pairs = []
        for spec in self.pairwise:
            a, sep, b = spec.partition(":")
            if not sep:
                raise ValueError(f"pairwise {spec!r}: write A:B, e.g. learned-k3:golden")
            pairs.append((a.strip(), b.strip()))
        return list(dict.fromkeys(pairs))

    def agent_names(self) -> list[str]:
        """`learned` and `learned-rag` expand to one agent per k: learned-k1, learned-k3, learned-rag-k3, …"""
        names: list[str] = []
        for a in self.agents:
            names += [f"{a}-k{k}" for k in self.ks] if a in ("learned", "learned-rag") else [a]
        return names


# ---------------------------------------------------------------- Parquet rows


class PersonaField(Record):
    path: str
    value: str


class SectionScore(Record):
    section: str
    score: float


class TurnRow(Record):
    persona_id: str
    agent: str
    session_index: int
    user_turn: int = Field(description="1-based user turn this message belongs to")
    seq: int = Field(description="order of the message in the session")
    role: Literal["user", "assistant", "tool_call", "tool_result"]
    content: str
    tool_name: str | None = None


class SessionRow(Record):
    persona_id: str
    agent: str
    session_index: int
    position: int = Field(description="1-based place of the session in the persona's replay")
    scene_id: str
    kind: str
    user_turns: int
    satisfied: bool
    malformed_verdicts: int = Field(
        description="user-simulator answers with neither <Satisfied> nor <Continue>"
    )
    tool_calls: int
    tool_errors: int
    first_answer: str
    final_answer: str
    persona_updated: bool
    agent_calls: int
    agent_prompt_tokens: int
    agent_completion_tokens: int
    eval_prompt_tokens: int
    eval_completion_tokens: int
    agent_llm_seconds: float
    wall_seconds: float


class SnapshotRow(Record):
    persona_id: str
    agent: str
    after_session: int = Field(
        description="session_index after which the persona holds (-1: the starting persona)"
    )
    position: int
    fields: list[PersonaField]
    changed: list[str] = Field(description="paths changed by the update that produced this snapshot")


class MetricRow(Record):
    persona_id: str
    agent: str
    session_index: int
    position: int
    utterances: int = Field(
        description="user utterances in the session (3 = the cap, also when never satisfied)"
    )
    satisfied: bool
    helpfulness: float | None = Field(
        description="judge solution score 0-10 of the first answer; null when unparsable"
    )
    personalization: float | None
    rating_raw: str | None = Field(description="judge text when its rating could not be parsed")
    field_similarity: float | None = Field(
        description="mean over sections of mean rapidfuzz per field, 0-1; null without persona"
    )
    section_similarity: list[SectionScore]
    judge_consistency: float | None
    judge_detail: float | None
    similarity_raw: str | None
    revealed_seen: int = Field(
        description="distinct non-Demographics fields revealed (lexically) by the user messages the agent "
        "received in sessions up to this one: the neutralized openings and the simulated follow-ups"
    )
    revealed_held: int | None
    revealed_intended: int = Field(
        0,
        description="distinct non-Demographics fields the generator meant the personalized queries up to "
        "this session to reveal (dataset revealed_fields); the agent never saw those queries",
    )
    changes_due: int = Field(description="dated preference changes in force at this session")
    changes_tracked: int | None
    tokens: int = Field(description="agent-side tokens in this session (chatbot, tools, updates)")
    wall_seconds: float
    user_tokens: int = Field(
        0, description="word tokens the user wrote in the session, the opening included (user effort)"
    )
    corrections: int = Field(
        0, description="answers the user rejected (<Continue>), the last one at the turn cap included"
    )
    timeout: bool = Field(False, description="the session used every user turn without satisfying the user")


class MemoryCardRow(Record):
    """One VARS memory card (§3.4, appendix J) as it stands at the end of the persona's replay."""

    persona_id: str
    agent: str
    card: int = Field(description="0-based order of creation within the persona's replay")
    condition: str
    action: str
    confidence: float
    note: str = Field(description="When {condition}, {action}. — what enters the prompt")
    is_global: bool = Field(description="injected into every prompt (up to the cap), not retrieved")
    source_session: int = Field(description="session_index of the session it was extracted from")
    source_turns: list[int] = Field(description="1-based user turns of that session that showed it")
    injected: int = Field(description="turns the card entered the chatbot's prompt")


class PairwiseRow(Record):
    """One session's comparison of two agents' first answers, asked in both orders (Fig. 4)."""

    persona_id: str
    session_index: int
    position: int
    agent_a: str
    agent_b: str
    a_first: str | None = Field(description="verdict with A shown as Response 1: first | second | tie")
    a_second: str | None = Field(description="verdict with A shown as Response 2: first | second | tie")
    score_a: float | None = Field(
        description="A's score on this session: mean over both orders of 1 (A preferred), 0.5 (tie), 0"
    )


# ---------------------------------------------------------------- run outputs


class SummaryRow(BaseModel):
    agent: str
    sessions: int
    helpfulness: float | None
    personalization: float | None
    similarity_judge: float | None
    similarity_fields: float | None
    utterances: float
    satisfied: float
    revealed_held: float | None
    changes_tracked: float | None
    tokens_per_session: float
    success: float = Field(0.0, description="share of sessions ending with the user satisfied")
    first_answer_success: float = Field(0.0, description="share satisfied by the first answer")
    timeout: float = Field(0.0, description="share of sessions that used every turn unsatisfied")
    user_tokens: float = Field(0.0, description="mean word tokens the user wrote per session")
    corrections: float = Field(0.0, description="mean answers rejected per session")
    success_per_1k_user_tokens: float | None = Field(
        None, description="satisfied sessions per 1,000 user tokens (VARS' interaction efficiency)"
    )


class GroupRate(BaseModel):
    positions: str = Field(description="session positions of the group, e.g. 1-10")
    sessions: int
    win_rate: float | None


class PairwiseSummary(BaseModel):
    """Fig. 4: how often A's first answer is preferred to B's, ties counted half, by session group."""

    agent_a: str
    agent_b: str
    sessions: int = Field(description="sessions with at least one readable verdict")
    win_rate: float | None
    consistent: float | None = Field(description="share of sessions where both orders named the same answer")
    groups: list[GroupRate]


class AgentSettings(BaseModel):
    """What one agent of the run is: its kind, the LLM calls it makes (with their template hashes) and the
    settings it runs with."""

    kind: str
    k: int | None = Field(None, description="persona update cadence, for learned and learned-rag")
    calls: dict[str, str] = Field(description="declared call → template hash, the agent's own calls only")
    settings: dict[str, object]


class RoleSettings(BaseModel):
    """How the calls of one role were sent: its model at the endpoint and its temperature."""

    model: str
    temperature: float
    calls: list[str] = Field(description="the declared calls (templates) of this role")


class ReplayManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    version: str
    run: str
    created_at: datetime
    code_version: str
    model: str
    endpoint: str
    config: ReplayConfig
    roles: dict[str, RoleSettings] = Field(
        default_factory=dict,
        description="per call role (chatbot, tool, simulator, judge, memory): the model and temperature sent",
    )
    agents: list[str]
    personas: int
    sessions: int
    prompt_hashes: dict[str, str]
    usage_by_role: dict[str, StageUsage]
    usage_by_agent: dict[str, StageUsage]
    seconds: float
    summary: list[SummaryRow]
    pairwise: list[PairwiseSummary] = Field(default_factory=list)
    agent_settings: dict[str, AgentSettings] = Field(
        default_factory=dict, description="per agent: kind, calls with template hashes, settings"
    )
    shards: list[ShardInfo]
