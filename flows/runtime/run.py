"""One run setup for build, remote shards, replay and evaluation: `open_run`.

It computes, once: the endpoint (a flag, $OPENAI_BASE_URL, or the embedded model started here), the
effective config (its `llm` is the settings actually used — the embedded model changes a few; there is
no other LLMConfig to wonder about), the prompts (checked against the declared calls), the client,
the seed catalogue and the run's identity (what makes a re-run resume in the same folder).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel

from personaloom.llm.cache import ResponseCache
from personaloom.llm.calls import LLMCall, by_name
from personaloom.llm.client import LLM, endpoint_label
from personaloom.llm.endpoint import Endpoint, open_endpoint
from personaloom.llm.prompts import PromptLibrary
from personaloom.paths import SEEDS_DIR
from personaloom.runtime import collector
from personaloom.schemas.filtering import FilterConfig
from personaloom.stages.catalogue import Catalogue, load_catalogue
from personaloom.stages.filter.checks import AnswerChecks
from personaloom.stages.filter.grounding import ExampleIndex
from personaloom.version import code_version

C = TypeVar("C", bound=BaseModel)

# LLM settings that change speed, spending or where the endpoint is, not content: a resumed run may
# change them (e.g. a higher budget, another concurrency).
LLM_NOT_IDENTITY = {
    "concurrency",
    "rpm",
    "tpm",
    "timeout",
    "max_retries",
    "shutdown_error_rate",
    "shutdown_error_window",
    "base_url",
    "max_tokens",
    "max_cost",
    "prices",
}


@dataclass(frozen=True)
class Growth:
    """A build that adds personas past a published version (`build --grow`): where it starts."""

    parent: Path  # the version folder whose kept rows the new rows are deduplicated against
    first_persona: int  # persona indices continue: the new personas are first_persona..config.personas-1
    first_shard: int  # shard numbers continue past every part the parent holds


@dataclass
class Run(Generic[C]):
    """What every task of one run shares; handed to Prefect tasks unvisited (`quote`), never hashed."""

    config: C  # effective: `config.llm` is what the endpoint actually uses
    endpoint: Endpoint
    llm: LLM
    catalogue: Catalogue
    prompts: PromptLibrary
    calls: dict[str, LLMCall[Any, Any]]
    key: str  # the run's identity
    # the identity without what `open_run(identity=...)` added: for a grown build, the key a fresh build of
    # the same personas and settings has (its version is what that fresh build would publish)
    content_key: str = ""
    staging: Path = Path()  # where a build writes (set by the build once it claims the folder)
    growth: Growth | None = None  # set by a grown build: it generates only the personas past its parent
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def endpoint_label(self) -> str:
        return _endpoint_identity(self.endpoint)

    def call_manifest(self) -> dict[str, dict[str, Any]]:
        """Every declared call as the manifest records it, with the model its role resolves to."""
        hashes, llm = self.prompts.hashes, self.config.llm  # type: ignore[attr-defined]
        return {
            name: {**call.describe(hashes), "model": llm.model_for(call.role)}
            for name, call in sorted(self.calls.items())
        }


def run_identity(
    config: BaseModel,
    *,
    exclude: dict[str, Any],
    catalogue: Catalogue,
    prompts: PromptLibrary,
    calls: Iterable[LLMCall[Any, Any]],
    extra: dict[str, Any] | None = None,
) -> str:
    """Same content settings, seeds, templates of the run's calls and code → same key → resume."""
    ident = {
        "config": config.model_dump(mode="json", exclude=exclude),
        "seeds": catalogue.digest,
        "prompts": {c.name: prompts.hash(c.name) for c in calls},
        "code": code_version(),
        **(extra or {}),
    }
    return hashlib.sha256(orjson.dumps(ident, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def answer_checks(config: Any, prompts: PromptLibrary) -> AnswerChecks:
    """The checks declared calls ask, with the settings stage 5 applies (a run without a filter section:
    its defaults)."""
    lang_id = getattr(config, "filter", FilterConfig()).lang_id
    return AnswerChecks(
        ExampleIndex(prompts.examples()),
        language_min_score=lang_id.mismatch_min_score if lang_id.match_intended else None,
    )


@asynccontextmanager
async def open_run(
    config: C,
    *,
    calls: Iterable[LLMCall[Any, Any]],
    cache: Path,
    seeds_dir: Path | None = None,
    endpoint: Endpoint | None = None,
    exclude: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    preflight: bool = True,
) -> AsyncIterator[Run[C]]:
    """Open the endpoint (unless given, as on a remote worker) and everything a run needs; closes the client.

    `exclude` leaves settings out of the identity (default: the LLM's speed and budget settings);
    `identity` adds what else makes the run itself (e.g. the dataset version a replay reads);
    `preflight=False`: the caller checked the endpoint already (`prepare_build`), it is not asked again.
    """
    calls = tuple(calls)
    async with AsyncExitStack() as stack:
        if endpoint is None:
            endpoint = stack.enter_context(open_endpoint(config.llm, check=preflight))  # type: ignore[attr-defined]
        effective = config.model_copy(update={"llm": endpoint.config})
        prompts = PromptLibrary(prompt_set=endpoint.config.prompt_set)
        prompts.check(calls)
        catalogue = load_catalogue(seeds_dir or SEEDS_DIR)
        llm = LLM(
            endpoint.config,
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            cache=ResponseCache(cache),
            prompts=prompts,
            checks=answer_checks(config, prompts),
        )
        stack.push_async_callback(llm.aclose)

        def key_of(more: dict[str, Any]) -> str:
            return run_identity(
                effective,
                exclude=exclude if exclude is not None else {"llm": LLM_NOT_IDENTITY},
                catalogue=catalogue,
                prompts=prompts,
                calls=calls,
                # where the answers come from is part of what a run is: a build against a failing endpoint
                # is never "up to date" with a later one against a healthy endpoint (the model is in config)
                extra={"endpoint": _endpoint_identity(endpoint), **more},
            )

        key = key_of(identity or {})
        # what exists now lives for the whole run: the collector's passes skip it (runtime/collector.py)
        stack.enter_context(collector.for_run())
        yield Run(effective, endpoint, llm, catalogue, prompts, by_name(calls), key, key_of({}))


def _endpoint_identity(endpoint: Endpoint) -> str:
    return "embedded" if endpoint.embedded else endpoint_label(endpoint.base_url)


def flow_run_namer(kind: str) -> Callable[[], str]:
    """Prefect's `flow_run_name` for a flow whose `config` parameter names a dataset: KIND-DATASET-TIME."""

    def name() -> str:
        from prefect.runtime import flow_run

        cfg = flow_run.parameters.get("config")
        dataset = getattr(cfg, "dataset", None) or (cfg if isinstance(cfg, dict) else {}).get("dataset")
        return f"{kind}-{dataset or 'dataset'}-{datetime.now(UTC):%Y%m%d-%H%M%S}"

    return name
