"""Jinja2 prompt templates: one file per LLM call, rendered to chat messages, hashed for the cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2

from flows.paths import PROMPTS_DIR

# A template defines a `system` block and a `user` block; both become chat messages.
ROLES = ("system", "user")


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
            {str(p.relative_to(base))[:-3] for base in (self.root / "default", self.root / self.prompt_set) for p in base.rglob("*.j2")}
        )
        return {n: self.hash(n) for n in names}

    def render(self, name: str, **variables: Any) -> RenderedPrompt:
        template = self.env.get_template(f"{name}.j2")
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
        return RenderedPrompt(name=name, template_hash=self.hashes.get(name) or self.hash(name), messages=messages)
