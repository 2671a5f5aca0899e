"""LLM spend: a per-model price table, conservative per-call estimates, a reserving ledger.

A run never exceeds its budget because it *reserves* each call's worst case before
making it (input estimate + `max_output_tokens`, and room for the one repair call a
schema-invalid answer may need) and settles with the response's usage_metadata after.
Estimates err high: 1 token per 2 bytes of text (Gemini averages about 4), 258 tokens
per image tile of up to 768x768 px, 32 tokens per second of audio, 263 per second of
video (Gemini's published rates), 258 per PDF page.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import pydantic
import yaml

PRICES_PATH = Path(__file__).resolve().parent / "prices.yaml"
REPAIR_OVERHEAD_TOKENS = 128


class MediaRates(pydantic.BaseModel):
    """A model's published media token rates (Gemini's by default)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    image: int = 258  # per image tile of up to 768x768 px
    audio_s: float = 32  # per second of audio
    video_s: float = 263  # per second of video (frames and audio track)
    page: int = 258  # per PDF page


DEFAULT_RATES = MediaRates()


class Price(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    input: float  # USD per 1M input tokens
    output: float  # USD per 1M output tokens
    batch_input: float | None = None  # the Batch API's; unset: half the online price
    batch_output: float | None = None
    media: MediaRates = DEFAULT_RATES

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1e6

    def batch(self) -> Price:
        """The price of the same tokens sent through the Batch API."""
        return Price(input=self.batch_input if self.batch_input is not None else self.input / 2,
                     output=(self.batch_output if self.batch_output is not None
                             else self.output / 2), media=self.media)


def load_prices(path: str | Path | None = None) -> dict[str, Price]:
    """Model id -> Price; keys starting with `_` are YAML anchors, not models."""
    raw = yaml.safe_load(Path(path or PRICES_PATH).read_text(encoding="utf-8")) or {}
    return {str(k): Price.model_validate(v) for k, v in raw.items() if not str(k).startswith("_")}


def price_for(model: str, path: str | Path | None = None) -> Price | None:
    prices = load_prices(path)
    if model in prices:
        return prices[model]
    # versioned ids ("gemini-2.5-flash-001") price like their family
    family = max((k for k in prices if model.startswith(k)), key=len, default=None)
    return prices.get(family) if family else None


def text_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 2)


def _tiles(p: dict, rates: MediaRates) -> int:
    h, w = int(p.get("height") or 768), int(p.get("width") or 768)
    return rates.image * math.ceil(h / 768) * math.ceil(w / 768)


def media_tokens(example: dict, rates: MediaRates = DEFAULT_RATES) -> int:
    """Worst-case tokens for the non-text parts of an Example as the stage sends them, at
    the model's per-image, per-second and per-page rates."""
    modality = example.get("modality")
    parts = example.get("parts") or []
    if modality == "image":
        total = sum(_tiles(p, rates) for p in parts
                    if p.get("height") and p.get("width") or p.get("pixels"))
        return max(total, rates.image)
    if modality == "page":  # its rendered image, else the PDF page itself
        total = sum(_tiles(p, rates) for p in parts
                    if p.get("height") and p.get("width") or p.get("pixels"))
        return max(total, rates.page)
    if modality == "interleaved":  # its pictures; its text counts as text
        return sum(_tiles(p, rates) for p in parts if p.get("pixels"))
    if modality in ("audio", "video"):
        meta = example.get("metadata") or "{}"
        try:
            import json

            seconds = float(json.loads(meta).get("duration_s") or 0)
        except (ValueError, TypeError, AttributeError):
            seconds = 0.0
        if seconds <= 0:  # unknown length: assume 1 s per 16 KB, at least 30 s
            seconds = max(30.0, (example.get("size_bytes") or 0) / 16000)
        return math.ceil(seconds * (rates.audio_s if modality == "audio" else rates.video_s))
    return 0


def example_text(example: dict) -> str:
    return "\n".join(p["text"] for p in example.get("parts") or [] if p.get("text"))


@dataclasses.dataclass(frozen=True)
class Estimate:
    calls: int
    input_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def cost(self, price: Price | None) -> float:
        return price.cost(self.input_tokens, self.output_tokens) if price else 0.0

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(self.calls + other.calls, self.input_tokens + other.input_tokens,
                        self.output_tokens + other.output_tokens)


ZERO = Estimate(0, 0, 0)


def call_estimate(example: dict, prompt_text: str, max_output_tokens: int,
                  with_repair: bool = True, rates: MediaRates = DEFAULT_RATES) -> Estimate:
    """The worst case of one (example, kind) call, and of its repair call if allowed."""
    return examples_estimate([example], prompt_text, max_output_tokens, with_repair,
                             rates=rates)


def examples_estimate(examples: list[dict], prompt_text: str, max_output_tokens: int,
                      with_repair: bool = True, extra_text: str = "",
                      rates: MediaRates = DEFAULT_RATES) -> Estimate:
    """The worst case of one call that sends `examples` (and `extra_text`) after the prompt."""
    inp = text_tokens(prompt_text) + text_tokens(extra_text) + sum(
        text_tokens(example_text(e)) + media_tokens(e, rates) for e in examples)
    main = Estimate(1, inp, max_output_tokens)
    if not with_repair:
        return main
    repair = Estimate(1, inp + max_output_tokens + REPAIR_OVERHEAD_TOKENS, max_output_tokens)
    return main + repair


class Budget(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    max_calls: int | None = pydantic.Field(None, ge=0)
    max_tokens: int | None = pydantic.Field(None, ge=0)
    max_cost: float | None = pydantic.Field(None, ge=0)  # USD

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.max_calls, self.max_tokens, self.max_cost))


class BudgetExceeded(Exception):
    """The run stopped at its budget; what it paid for is cached, a rerun resumes (exit 3)."""

    def __init__(self, payload: dict):
        super().__init__(f"stopped by the LLM budget: {payload['counts']}")
        self.payload = payload


def usage(stats: dict[str, int], price: Price | None) -> dict:
    """What a run spent (cache hits are free): tokens from usage_metadata, priced."""
    inp, out = int(stats.get("input_tokens", 0)), int(stats.get("output_tokens", 0))
    return {"llm_calls": int(stats.get("llm_calls", 0)), "requests": int(stats.get("requests", 0)),
            "input_tokens": inp, "output_tokens": out,
            "cost_usd": round(price.cost(inp, out), 6) if price else None}


class Ledger:
    """Reserve before a call, settle after: spent + reserved never passes the budget."""

    def __init__(self, budget: Budget, price: Price | None):
        if budget.max_cost is not None and price is None:
            raise ValueError("a cost budget needs the model's price in synth/prices.yaml")
        self.budget, self.price = budget, price
        self.reserved = ZERO
        self.spent = ZERO
        self._lock = threading.Lock()

    def fits(self, total: Estimate) -> bool:
        b = self.budget
        return ((b.max_calls is None or total.calls <= b.max_calls)
                and (b.max_tokens is None or total.tokens <= b.max_tokens)
                and (b.max_cost is None or total.cost(self.price) <= b.max_cost + 1e-12))

    def reserve(self, est: Estimate) -> bool:
        with self._lock:
            if not self.fits(self.spent + self.reserved + est):
                return False
            self.reserved = self.reserved + est
            return True

    def plan(self, pending: dict[str, Estimate]) -> list[str]:
        """The work units (in key order) whose worst case fits: each one reserved."""
        return [k for k in sorted(pending) if self.reserve(pending[k])]

    def settle_run(self, spent: dict) -> None:
        """At the end of a run: release every reservation, book what `usage()` says was
        spent, and record in `spent` whether that stayed within the budget."""
        actual = Estimate(spent["requests"], spent["input_tokens"], spent["output_tokens"])
        self.settle(self.reserved, actual)
        spent["within_budget"] = self.fits(self.spent)

    def settle(self, reserved: Estimate, actual: Estimate) -> None:
        """Release a reservation and book what the call really used."""
        with self._lock:
            self.reserved = Estimate(self.reserved.calls - reserved.calls,
                                     self.reserved.input_tokens - reserved.input_tokens,
                                     self.reserved.output_tokens - reserved.output_tokens)
            self.spent = self.spent + actual


@dataclasses.dataclass
class PlanRow:
    """One modality's share of a run: what a dry run prints."""

    examples: int = 0
    calls: int = 0
    media_tokens: int = 0  # sent once per call (first attempts), at the model's rates
    worst: Estimate = ZERO  # with every repair call


def cost_plan(rows: dict[str, PlanRow], price: Price | None, mode: str = "online") -> dict:
    """The run's plan as JSON: per modality and in total, worst-case tokens priced online
    and through the Batch API (None: the model has no price in prices.yaml)."""
    def priced(e: Estimate, p: Price | None) -> float | None:
        return round(e.cost(p), 6) if p else None

    batch = price.batch() if price else None
    out: dict[str, dict] = {}
    total = PlanRow()
    for modality in sorted(rows):
        r = rows[modality]
        out[modality] = {"examples": r.examples, "calls": r.calls,
                         "media_tokens": r.media_tokens, "input_tokens": r.worst.input_tokens,
                         "output_tokens": r.worst.output_tokens,
                         "online_usd": priced(r.worst, price), "batch_usd": priced(r.worst, batch)}
        total = PlanRow(total.examples + r.examples, total.calls + r.calls,
                        total.media_tokens + r.media_tokens, total.worst + r.worst)
    out["total"] = {"examples": total.examples, "calls": total.calls,
                    "media_tokens": total.media_tokens,
                    "input_tokens": total.worst.input_tokens,
                    "output_tokens": total.worst.output_tokens,
                    "online_usd": priced(total.worst, price),
                    "batch_usd": priced(total.worst, batch)}
    return {"mode": mode, "modalities": out,
            "cost_usd_for_mode": out["total"]["batch_usd" if mode == "batch" else "online_usd"]}


def plan_table(plan: dict) -> str:
    """The plan as a fixed-width table (a dry run prints it on stderr)."""
    cols = ("examples", "calls", "media_tokens", "input_tokens", "output_tokens",
            "online_usd", "batch_usd")
    head = ["modality", *cols]
    lines = [[m, *("-" if r[c] is None else (f"{r[c]:.4f}" if c.endswith("usd") else str(r[c]))
                   for c in cols)] for m, r in plan["modalities"].items()]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [head, *lines])
