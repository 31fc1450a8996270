"""Spending limits of a run: tokens and US dollars, from a per-model price table users can extend."""

from __future__ import annotations

from dataclasses import dataclass

from personaloom.errors import UserError

# USD per 1M tokens (input, output). Extend or override in the config: [llm.prices] "my-model" = [0.5, 1.5]
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "gemma3-270m": (0.0, 0.0),  # the embedded local model
}


class BudgetExceeded(UserError):
    """The run reached --max-tokens or --max-cost; finished work is kept for the re-run."""


@dataclass
class Budget:
    max_tokens: int | None = None
    max_cost: float | None = None
    price: tuple[float, float] = (0.0, 0.0)
    tokens: int = 0
    cost: float = 0.0

    @classmethod
    def for_model(
        cls,
        model: str,
        max_tokens: int | None,
        max_cost: float | None,
        prices: dict[str, tuple[float, float]],
    ) -> Budget:
        table = {**DEFAULT_PRICES, **prices}
        price = table.get(model)
        if price is None and max_cost is not None:
            raise UserError(
                f"no price for model {model!r} to enforce --max-cost: add it to the config as "
                f'[llm.prices] "{model}" = [input, output] USD per 1M tokens'
            )
        return cls(max_tokens=max_tokens, max_cost=max_cost, price=price or (0.0, 0.0))

    def cost_of(
        self, prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None = None
    ) -> float:
        """USD at `price` (the model actually called), default the run's model's price."""
        p = self.price if price is None else price
        return (prompt_tokens * p[0] + completion_tokens * p[1]) / 1e6

    def spend(
        self, prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None = None
    ) -> float:
        cost = self.cost_of(prompt_tokens, completion_tokens, price)
        self.tokens += prompt_tokens + completion_tokens
        self.cost += cost
        return cost

    def check(self) -> None:
        """Called before each new request: none starts once a limit is reached."""
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetExceeded(
                f"token budget reached: {self.tokens:,} of --max-tokens {self.max_tokens:,} spent; "
                "finished work is kept, "
                "re-run with a higher budget to continue from the cache"
            )
        if self.max_cost is not None and self.cost >= self.max_cost:
            raise BudgetExceeded(
                f"cost budget reached: ${self.cost:.4f} of --max-cost ${self.max_cost:g} spent; "
                "finished work is kept, "
                "re-run with a higher budget to continue from the cache"
            )
