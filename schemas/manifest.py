"""The manifest written beside every dataset version."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.config import BuildConfig


class StageUsage(BaseModel):
    """LLM accounting for one stage."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    retries: int = 0
    repairs: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0


class StageCount(BaseModel):
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    fallback_rows: int = Field(0, description="rows with at least one field filled from seed attributes")


class ShardInfo(BaseModel):
    path: str
    rows: int
    bytes: int
    sha256: str


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
    counts: dict[str, StageCount]
    usage: dict[str, StageUsage]
    rejection_reasons: dict[str, int]
    stage_seconds: dict[str, float] = Field(description="seconds per stage, summed over shards (shards overlap)")
    timings: dict[str, float] = Field(default_factory=dict, description="wall seconds: endpoint_start, generate")
    shards: list[ShardInfo]
