"""Jinja2 prompt templates: one file per LLM call, rendered to chat messages, hashed for the cache."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2 import meta

from personaloom.errors import UserError
from personaloom.paths import PROMPTS_DIR
from personaloom.text.languages import language_name

if TYPE_CHECKING:
    from personaloom.llm.calls import LLMCall

# Template folders whose calls write dataset text (their worked examples must not reappear in it).
GENERATION = ("seed/", "personas/", "scenes/", "queries/")
# Names a template may use without a call providing them (jinja2's own globals).
GLOBALS = {"range", "dict", "lipsum", "cycler", "joiner", "namespace"}
# A template defines a `system` block and a `user` block; both become chat messages.
ROLES = ("system", "user")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_QUOTED = re.compile(r'"([^"\n]{25,})"')  # stages/filter/grounding.MIN_CHARS: shorter is a key, not prose


def example_texts(template_source: str) -> list[str]:
    """Quoted strings of a template's literal text (its worked examples), Jinja expressions removed:
    what stage 5's `copied_example` rule looks for in the generated text."""
    quoted = (m.group(1).strip() for m in _QUOTED.finditer(_JINJA.sub(" ", template_source)))
    return [q for q in quoted if q.count(" ") >= 3]  # prose, not a key or an identifier


@dataclass(frozen=True)
class RenderedPrompt:
    name: str
    template_hash: str
    messages: list[dict[str, str]]


class PromptLibrary:
    """Templates under prompts/<set>/<stage>/<call>.j2; the 'small' set falls back to 'default'."""

    def __init__(self, root: Path = PROMPTS_DIR, prompt_set: str = "default") -> None:
        self.root = root
        self.prompt_set = prompt_set
        search = [root / prompt_set] + ([root / "default"] if prompt_set != "default" else [])
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(p) for p in search]),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            autoescape=False,
        )
        # "Write in {{ seed.interaction_language | language_name }}": one template for every language
        self.env.filters["language_name"] = language_name
        self._templates: dict[str, jinja2.Template] = {}

    def _path(self, name: str) -> Path:
        for base in (self.root / self.prompt_set, self.root / "default"):
            p = base / f"{name}.j2"
            if p.exists():
                return p
        raise FileNotFoundError(f"prompt template {name}.j2 not found under {self.root}")

    def hash(self, name: str) -> str:
        return hashlib.sha256(self._path(name).read_bytes()).hexdigest()[:16]

    @cached_property
    def hashes(self) -> dict[str, str]:
        """Hash of every template this set resolves to (recorded in the manifest)."""
        names = sorted(
            {
                str(p.relative_to(base))[:-3]
                for base in (self.root / "default", self.root / self.prompt_set)
                for p in base.rglob("*.j2")
            }
        )
        return {n: self.hash(n) for n in names}

    def examples(
        self, prefixes: tuple[str, ...] = ("seed/", "personas/", "scenes/", "queries/")
    ) -> list[str]:
        """The worked examples (quoted literal strings) of every template under these folders."""
        names = [n for n in self.hashes if n.startswith(prefixes)]
        return [e for n in names for e in example_texts(self._path(n).read_text(encoding="utf-8"))]

    def check(self, calls: Iterable[LLMCall[Any, Any]]) -> None:
        """Every call's template exists and uses only the variables the call declares (one-line UserError)."""
        for call in calls:
            try:
                path = self._path(call.name)
            except FileNotFoundError:
                raise UserError(
                    f"prompt template {call.name}.j2 is missing under {self.root / self.prompt_set}: "
                    "restore it (every declared LLM call needs its template)"
                ) from None
            try:
                ast = self.env.parse(path.read_text(encoding="utf-8"))
            except jinja2.TemplateSyntaxError as e:
                raise UserError(f"prompt template {path} line {e.lineno}: {e.message}") from None
            unknown = sorted(meta.find_undeclared_variables(ast) - set(call.variables) - GLOBALS)
            if unknown:
                raise UserError(
                    f"prompt template {path} uses {', '.join(unknown)}, which call {call.name} does not "
                    f"provide (it provides {', '.join(call.variables)}): fix the template"
                )
            if not {"system", "user"} & {b.name for b in ast.find_all(jinja2.nodes.Block)}:
                raise UserError(f"prompt template {path} has no system or user block")

    def render(self, name: str, **variables: Any) -> RenderedPrompt:
        # Looked up once per library: jinja's own cache stats the file on every get_template (auto-reload),
        # and a run's prompts are fixed at start anyway (their hashes key the response cache).
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = self.env.get_template(f"{name}.j2")
        ctx = template.new_context(variables)
        messages = []
        for role in ROLES:
            block = template.blocks.get(role)
            if block is None:
                continue
            text = "".join(block(ctx)).strip()
            if text:
                messages.append({"role": role, "content": text})
        if not messages:
            raise ValueError(f"prompt {name}.j2 rendered no system or user block")
        return RenderedPrompt(
            name=name, template_hash=self.hashes.get(name) or self.hash(name), messages=messages
        )
