"""VARS (arXiv 2603.20939; code github.com/YurenHao0426/VARS): structured preference memory, retrieval
scored by a user vector, the vector learned online by REINFORCE from a weak reward.

Where each formula sits (paper section → code):
- §3.4 memory cards: `VarsAgent.observe` (one `agent/vars_extract` call per finished session) gives
  {condition, action, confidence} with the source session and the user turns that showed it; the note is
  "When {condition}, {action}." and e_m is the note's embedding (as the code's
  `_add_preferences_as_memory`; the paper embeds the source query). Global cards (`is_global`, the
  paper's rule: universal words in the condition, or under three words and no domain term) skip retrieval
  and enter the prompt directly, at most `global_cap` (10).
- §3.4 item space: v_m = P·e_m. The paper's P is a PCA (k = 256) over every user's cards; a replay keeps users
  independent, so P is the identity when the embedding has at most k dimensions, else a fixed random
  orthonormal projection (`ItemSpace`).
- §3.5 scoring: s(u_t, m) = s₀(u_t, m) + ⟨z_eff, v_m⟩, z_eff = β_L z_L + β_S z_S (`VarsState.z_eff`,
  `VarsState.scores`); s₀ is the cosine of query and card embeddings (the paper's reranker log-probability
  needs a reranker model); π_z(m | u_t) = softmax(s/τ) over the K dense candidates (`policy`); the top J by s
  enter the prompt (`select`).
- §3.6 reward and gate: r̂_t is the simulated user's verdict after answer t (+1 satisfied, -1 it asked for
  more: the paper estimates the same signal from the follow-up's keywords); the gate g_t is table 13
  (`gate`), s_max the best cosine between the query and a chosen card.
- §3.6 eqs. (1)-(5), appendix D.1: v_chosen = mean of the chosen v_m, μ_t = Σ π_i v_i, A = g_t(r̂_t - b_U),
  Δz_{L,S} = η_{L,S}·(A/τ)(v_chosen - μ_t), z_L += Δz_L, z_S ← (1-λ)z_S + Δz_S, then b_U ← (1-α)b_U + α r̂_t
  (`VarsState.update`; like the code, no step and no baseline move when no card was chosen or |A| < 1e-6).
- §3.7: z_S resets at each session (`VarsState.new_session`), z_L persists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, Field

from personaloom.agent.base import Agent
from personaloom.agent.chatbot import AgentContext, transcript
from personaloom.agent.persona import language_of
from personaloom.agent.sessions import SessionLog, sample_session
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.records import DatasetRow
from personaloom.schemas.replay import MemoryCardRow, ReplayConfig, VarsParams

# ---------------------------------------------------------------- the user state


@dataclass
class Step:
    """One REINFORCE step, for tests and logs."""

    reward: float
    gate: float
    advantage: float
    delta_long: np.ndarray
    delta_short: np.ndarray


@dataclass
class VarsState:
    """The user's long- and short-term vectors and reward baseline (§3.5-3.6)."""

    params: VarsParams
    dim: int
    z_long: np.ndarray = field(init=False)
    z_short: np.ndarray = field(init=False)
    baseline: float = 0.0  # b_U

    def __post_init__(self) -> None:
        self.z_long = np.zeros(self.dim)
        self.z_short = np.zeros(self.dim)

    def new_session(self) -> None:
        self.z_short = np.zeros(self.dim)

    @property
    def z_eff(self) -> np.ndarray:
        p = self.params
        if p.mix == "alpha":  # the seed's convex mix s_u = α·z_L + (1-α)·z_S
            return p.mix_alpha * self.z_long + (1 - p.mix_alpha) * self.z_short
        return p.beta_long * self.z_long + p.beta_short * self.z_short

    def scores(self, base: np.ndarray, items: np.ndarray) -> np.ndarray:
        """s = s₀ + ⟨z_eff, v_m⟩ for each candidate row of `items`."""
        return base + items @ self.z_eff if len(items) else np.zeros(0)

    def policy(self, scores: np.ndarray) -> np.ndarray:
        """π_z(m | u_t) = exp(s/τ) / Σ exp(s/τ)."""
        if not len(scores):
            return scores
        z = scores / self.params.tau
        e = np.exp(z - z.max())
        return e / e.sum()

    def select(self, scores: np.ndarray) -> list[int]:
        """The top J candidates by s (ties: the older card first)."""
        return [int(i) for i in np.argsort(-scores, kind="stable")[: self.params.top_m]]

    def update(
        self, items: np.ndarray, chosen: list[int], probs: np.ndarray, reward: float, gate: float
    ) -> Step | None:
        """Eqs. (1)-(5): one REINFORCE step on the candidates `items` of a turn; None when nothing moved."""
        if not chosen:
            return None
        p = self.params
        advantage = gate * (reward - self.baseline)
        if abs(advantage) < 1e-6:
            return None
        v_chosen = items[chosen].mean(axis=0)
        mu = probs @ items
        grad = (advantage / p.tau) * (v_chosen - mu)
        delta_long, delta_short = p.eta_long * grad, p.eta_short * grad
        self.z_long = self.z_long + delta_long
        self.z_short = (1 - p.decay) * self.z_short + delta_short
        self.baseline = (1 - p.baseline_alpha) * self.baseline + p.baseline_alpha * reward
        return Step(reward, gate, advantage, delta_long, delta_short)


def gate(reward: float, s_max: float) -> float:
    """Table 13: how much of the reward the retrieval earned, from its sign and the best query-card cosine."""
    if reward < -0.5 and s_max < 0.2:
        return 0.9  # retrieval failure: nothing similar was retrieved
    if reward < -0.5 and s_max > 0.5:
        return 0.2  # LLM failure: a relevant card was there
    if reward > 0.5:
        return 0.6 if s_max > 0.4 else 0.3  # retrieval helped / no retrieval help
    return 0.5


def verdict_reward(satisfied: bool) -> float:
    """r̂_t: +1 when the user is satisfied with answer t, -1 when they ask for more."""
    return 1.0 if satisfied else -1.0


class ItemSpace:
    """v_m = P·e_m: the identity up to `dim` dimensions, else a fixed orthonormal random projection."""

    def __init__(self, embed_dim: int, item_dim: int) -> None:
        self.dim = min(embed_dim, item_dim)
        self.proj: np.ndarray | None = None
        if embed_dim > item_dim:
            gauss = np.random.default_rng(0).standard_normal((embed_dim, item_dim))
            self.proj = np.linalg.qr(gauss)[0].T  # item_dim orthonormal rows

    def __call__(self, e: np.ndarray) -> np.ndarray:
        return e if self.proj is None else self.proj @ e


# ---------------------------------------------------------------- memory cards

GLOBAL_WORDS = re.compile(
    r"\b(general|always|any|all|every|regardless|any task|any topic|any question|all tasks|all topics)\b"
)
DOMAIN_TERMS = (
    "math",
    "code",
    "coding",
    "program",
    "writing",
    "essay",
    "science",
    "history",
    "language",
    "physics",
    "chemistry",
    "biology",
    "literature",
    "creative",
    "technical",
    "formal",
    "informal",
    "academic",
    "casual",
)


def is_global(condition: str) -> bool:
    """§3.4: universal words in the condition, or fewer than three words and no domain-specific term.

    (The code matches the words as substrings, so "any" finds "company"; here they are whole words.)"""
    c = condition.lower().strip()
    if GLOBAL_WORDS.search(c):
        return True
    return len(c.split()) < 3 and not any(t in c for t in DOMAIN_TERMS)


def note_of(condition: str, action: str) -> str:
    return f"When {condition}, {action}."


@dataclass
class Card:
    condition: str
    action: str
    confidence: float
    source_session: int
    source_turns: list[int]
    embedding: np.ndarray
    item: np.ndarray  # v_m
    injected: int = 0  # turns the card entered the prompt

    @property
    def note(self) -> str:
        return note_of(self.condition, self.action)

    @property
    def is_global(self) -> bool:
        return is_global(self.condition)


class Preference(BaseModel):
    condition: str = Field(description='when the rule applies; "general" when it applies to every request')
    action: str = Field(description="what the assistant should do then")
    confidence: float = Field(ge=0, le=1, description="how sure the user's messages make it")
    turns: list[int] = Field(default_factory=list, description="the user turns that show it")


class PreferenceList(BaseModel):
    preferences: list[Preference] = Field(default_factory=list)


class ExtractJob(NamedTuple):
    log: SessionLog
    language: str = "en"


def extracted(job: ExtractJob, res: LLMResult[Any]) -> list[Preference]:
    """The preferences of a valid answer with a condition and an action (turns kept to the session's)."""
    if res.value is None:
        return []
    turns = set(range(1, job.log.user_turns + 1))
    out = []
    for p in res.value.preferences:
        if p.condition.strip() and p.action.strip():
            out.append(p.model_copy(update={"turns": sorted(set(p.turns) & turns)}))
    return out


VARS_EXTRACT: LLMCall[ExtractJob, list[Preference]] = LLMCall(
    name="agent/vars_extract",
    variables=("transcript", "language"),
    render=lambda job: {"transcript": transcript(job.log.dialogue()), "language": job.language},
    build=extracted,
    response=PreferenceList,
    max_tokens=600,
    role="memory",
    sample=lambda s: ExtractJob(sample_session(s.row), language_of(s.row)),
)


# ---------------------------------------------------------------- the agent


@dataclass
class Pending:
    """A turn's retrieval, kept until the user's verdict on its answer."""

    query: np.ndarray
    cards: list[int]  # indices of the candidate cards
    items: np.ndarray  # their v_m, one row each
    probs: np.ndarray  # π over them
    chosen: list[int]  # positions in `cards` of the injected ones


class VarsAgent(Agent):
    CALLS = (VARS_EXTRACT,)

    @classmethod
    def settings(cls, cfg: ReplayConfig) -> dict[str, object]:
        return {**super().settings(cfg), **cfg.vars.model_dump()}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.params = self.cfg.vars
        self.space = ItemSpace(self.embedder.dim, self.params.item_dim)
        self.state = VarsState(self.params, self.space.dim)
        self.cards: list[Card] = []
        self.steps: list[Step] = []
        self._globals: list[str] = []
        self._pending: Pending | None = None

    async def context(self, row: DatasetRow) -> AgentContext:
        self.state.new_session()
        globals_ = [c for c in self.cards if c.is_global][: self.params.global_cap]
        for c in globals_:
            c.injected += 1
        self._globals = [c.note for c in globals_]
        return AgentContext(preferences=list(self._globals))

    async def turn_context(self, ctx: AgentContext, log: SessionLog, turn: int) -> AgentContext:
        """Retrieval for the user's latest message: dense top-K conditional cards, scored, top J injected."""
        self._pending = None
        conditional = [i for i, c in enumerate(self.cards) if not c.is_global]
        if not conditional:
            return ctx
        query = await self.embedder.aembed(
            next(m.content for m in reversed(log.messages) if m.role == "user")
        )
        base_all = np.array([self.cards[i].embedding @ query for i in conditional])
        dense = np.argsort(-base_all, kind="stable")[: self.params.dense_top_k]
        cards = [conditional[int(i)] for i in dense]
        items = np.stack([self.cards[i].item for i in cards])
        scores = self.state.scores(base_all[dense], items)
        chosen = self.state.select(scores)
        self._pending = Pending(query, cards, items, self.state.policy(scores), chosen)
        for j in chosen:
            self.cards[cards[j]].injected += 1
        return AgentContext(preferences=self._globals + [self.cards[cards[j]].note for j in chosen])

    async def after_turn(self, log: SessionLog, turn: int, satisfied: bool) -> None:
        """The REINFORCE step on the turn's retrieval, from the user's verdict on its answer."""
        pending, self._pending = self._pending, None
        if pending is None or not pending.chosen:
            return
        reward = verdict_reward(satisfied)
        s_max = max(float(self.cards[pending.cards[j]].embedding @ pending.query) for j in pending.chosen)
        step = self.state.update(pending.items, pending.chosen, pending.probs, reward, gate(reward, s_max))
        if step is not None:
            self.steps.append(step)

    async def observe(
        self, log: SessionLog, position: int, row: DatasetRow | None = None
    ) -> list[str] | None:
        await self.sessions.add(log)
        found = await self.caller.run("memory", VARS_EXTRACT, ExtractJob(log, self.language))
        notes = {c.note for c in self.cards}
        for p in found:
            condition, action = p.condition.strip(), p.action.strip()
            note = note_of(condition, action)
            if note in notes:  # the code's deduplication: one card per note
                continue
            e = await self.embedder.aembed(note)
            self.cards.append(
                Card(condition, action, p.confidence, log.session_index, p.turns, e, self.space(e))
            )
            notes.add(note)
        return None

    def memory_cards(self, persona_id: str) -> list[MemoryCardRow]:
        return [
            MemoryCardRow(
                persona_id=persona_id,
                agent=self.name,
                card=i,
                condition=c.condition,
                action=c.action,
                confidence=c.confidence,
                note=c.note,
                is_global=c.is_global,
                source_session=c.source_session,
                source_turns=c.source_turns,
                injected=c.injected,
            )
            for i, c in enumerate(self.cards)
        ]
