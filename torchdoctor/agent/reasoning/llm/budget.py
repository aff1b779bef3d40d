"""Per-audit token and cost budgets, shared by every point the graph reasons over in parallel.

A request reserves its worst case (estimated prompt + maximum completion) before it is sent and
settles the real usage after, so concurrent points can never overshoot the budget together.
Unknown prices never fail an audit: the cost is reported as unknown and the token budget still
holds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from torchdoctor.agent.reasoning.llm.config import ModelPrice


class BudgetExhausted(Exception):
    """The audit's token or cost budget cannot pay for the next request."""


@dataclass(frozen=True)
class Reservation:
    tokens: int
    cost_usd: float


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about four characters per token for code and English)."""
    return tokens_for_chars(len(text))


def tokens_for_chars(chars: int) -> int:
    return (chars + 3) // 4


class Budget:
    """Thread-safe running totals against the configured limits."""

    def __init__(
        self, token_limit: int, cost_limit_usd: float | None, price: ModelPrice | None
    ) -> None:
        self.token_limit = token_limit
        self.cost_limit_usd = cost_limit_usd
        self.price = price
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._lock = threading.Lock()

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> float:
        if self.price is None:
            return 0.0
        return (
            prompt_tokens * self.price.input_per_mtok
            + completion_tokens * self.price.output_per_mtok
        ) / 1_000_000

    def available_tokens(self) -> int:
        """Tokens neither spent nor reserved yet."""
        with self._lock:
            spent = self.prompt_tokens + self.completion_tokens + self._reserved_tokens
        return self.token_limit - spent

    def reserve(self, prompt_tokens: int, max_completion_tokens: int) -> Reservation:
        """Hold the worst case of one request, or raise `BudgetExhausted`."""
        tokens = prompt_tokens + max_completion_tokens
        cost = self.cost_of(prompt_tokens, max_completion_tokens)
        with self._lock:
            spent = self.prompt_tokens + self.completion_tokens + self._reserved_tokens
            if spent + tokens > self.token_limit:
                raise BudgetExhausted(
                    f"token budget exhausted ({spent} of {self.token_limit} spent or reserved, "
                    f"next request needs up to {tokens})"
                )
            if self.cost_limit_usd is not None and self.price is not None:
                committed = self.cost_usd + self._reserved_cost
                if committed + cost > self.cost_limit_usd:
                    raise BudgetExhausted(
                        f"cost budget exhausted (${committed:.4f} of "
                        f"${self.cost_limit_usd:.4f} spent or reserved)"
                    )
            self._reserved_tokens += tokens
            self._reserved_cost += cost
        return Reservation(tokens, cost)

    def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        """Replace a reservation by what the request really used (0, 0 when it failed)."""
        with self._lock:
            self._reserved_tokens -= reservation.tokens
            self._reserved_cost -= reservation.cost_usd
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cost_usd += self.cost_of(prompt_tokens, completion_tokens)

    def cost_label(self) -> str:
        return "unknown" if self.price is None else f"{self.cost_usd:.6f}"
