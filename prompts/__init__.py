"""Prompt templates shipped as package data: `<set>/<stage>/<call>.j2` (see personaloom.llm.prompts)."""
