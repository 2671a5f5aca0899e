"""The budget ledger and its estimates, against numbers worked by hand from the documented
rates (1 token per 2 bytes of text, 258 per 768 px image tile, 32 / 263 per second of audio /
video, a repair call's worst case) and the reserve-then-settle rule."""

from __future__ import annotations

import json
import threading

import pytest
from loom.synth.budget import (
    REPAIR_OVERHEAD_TOKENS,
    ZERO,
    Budget,
    Estimate,
    Ledger,
    Price,
    call_estimate,
    example_text,
    load_prices,
    media_tokens,
    price_for,
    text_tokens,
)

PRICE = Price(input=0.30, output=2.50)  # USD per 1M tokens


def test_price_cost_by_hand():
    assert PRICE.cost(1_000_000, 0) == pytest.approx(0.30)
    assert PRICE.cost(0, 1_000_000) == pytest.approx(2.50)
    assert PRICE.cost(2000, 400) == pytest.approx((2000 * 0.30 + 400 * 2.50) / 1e6)


def test_prices_file_and_family_lookup(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("m-1: {input: 1.0, output: 2.0}\nm-1-pro: {input: 5.0, output: 9.0}\n")
    prices = load_prices(path)
    assert prices == {"m-1": Price(input=1.0, output=2.0), "m-1-pro": Price(input=5.0, output=9.0)}
    assert price_for("m-1", path) == Price(input=1.0, output=2.0)
    assert price_for("m-1-pro-002", path) == Price(input=5.0, output=9.0)  # the longest family
    assert price_for("m-1-002", path) == Price(input=1.0, output=2.0)
    assert price_for("m-2", path) is None
    (tmp_path / "empty.yaml").write_text("")
    assert load_prices(tmp_path / "empty.yaml") == {}
    assert price_for("gemini-2.5-flash") == load_prices()["gemini-2.5-flash"]


def test_text_tokens_err_high():
    assert text_tokens("") == 0
    assert text_tokens("abc") == 2  # ceil(3 / 2)
    assert text_tokens("abcd") == 2
    assert text_tokens("ж") == 1  # 2 UTF-8 bytes
    assert text_tokens("красный") == 7  # 14 bytes


def test_media_tokens_by_hand():
    img = {"modality": "image", "parts": [{"height": 1000, "width": 700}]}
    assert media_tokens(img) == 258 * 2 * 1
    two = {"modality": "page", "parts": [{"height": 768, "width": 769}, {"height": 10,
                                                                          "width": 10}]}
    assert media_tokens(two) == 258 * 2 + 258
    assert media_tokens({"modality": "image", "parts": [{"pixels": b"x"}]}) == 258  # 768 x 768
    assert media_tokens({"modality": "image", "parts": [{"text": "a caption"}]}) == 258  # floor
    assert media_tokens({"modality": "image", "parts": []}) == 258
    audio = {"modality": "audio", "metadata": json.dumps({"duration_s": 10.5})}
    assert media_tokens(audio) == 336  # 10.5 s x 32
    video = {"modality": "video", "metadata": json.dumps({"duration_s": 2})}
    assert media_tokens(video) == 526  # 2 s x 263
    # Unknown length: 1 s per 16 KB, at least 30 s.
    assert media_tokens({"modality": "audio", "metadata": "{}"}) == 30 * 32
    assert media_tokens({"modality": "audio", "metadata": "not json",
                         "size_bytes": 64_000 * 16}) == 64 * 32
    assert media_tokens({"modality": "video", "metadata": json.dumps({"duration_s": -3}),
                         "size_bytes": 100}) == 30 * 263
    assert media_tokens({"modality": "audio"}) == 30 * 32
    assert media_tokens({"modality": "text", "parts": [{"text": "hi"}]}) == 0


def test_example_text_joins_text_parts():
    ex = {"parts": [{"text": "one"}, {"pixels": b"x"}, {"text": ""}, {"text": "two"}]}
    assert example_text(ex) == "one\ntwo"
    assert example_text({}) == ""


def test_call_estimate_with_and_without_repair():
    ex = {"modality": "text", "parts": [{"text": "x" * 100}]}  # 50 tokens
    prompt = "p" * 20  # 10 tokens
    main = call_estimate(ex, prompt, 256, with_repair=False)
    assert main == Estimate(1, 60, 256)
    both = call_estimate(ex, prompt, 256)
    repair_in = 60 + 256 + REPAIR_OVERHEAD_TOKENS
    assert both == Estimate(2, 60 + repair_in, 512)
    assert both.tokens == 60 + repair_in + 512
    img = {"modality": "image", "parts": [{"height": 100, "width": 100}]}
    assert call_estimate(img, prompt, 8, with_repair=False) == Estimate(1, 10 + 258, 8)


def test_estimate_arithmetic_and_cost():
    a, b = Estimate(1, 10, 20), Estimate(2, 1, 2)
    assert a + b == Estimate(3, 11, 22) and a + ZERO == a
    assert a.tokens == 30
    assert a.cost(PRICE) == pytest.approx(PRICE.cost(10, 20)) and a.cost(None) == 0.0


def test_budget_limited():
    assert not Budget().limited
    assert Budget(max_calls=0).limited and Budget(max_tokens=5).limited
    assert Budget(max_cost=0.0).limited
    with pytest.raises(ValueError):
        Budget(max_calls=-1)


@pytest.mark.parametrize(("budget", "fits", "too_much"), [
    (Budget(max_calls=3), Estimate(3, 10**9, 10**9), Estimate(4, 0, 0)),
    (Budget(max_tokens=100), Estimate(99, 60, 40), Estimate(0, 60, 41)),
    # 0.30 x 1000 / 1e6 + 2.50 x 200 / 1e6 = 0.0008 USD
    (Budget(max_cost=0.0008), Estimate(50, 1000, 200), Estimate(50, 1000, 201)),
])
def test_fits_each_limit_at_its_edge(budget, fits, too_much):
    ledger = Ledger(budget, PRICE)
    assert ledger.fits(fits) and not ledger.fits(too_much)


def test_reserve_settle_never_passes_the_budget():
    ledger = Ledger(Budget(max_calls=4, max_tokens=1000), PRICE)
    est = Estimate(1, 200, 100)
    assert [ledger.reserve(est) for _ in range(4)] == [True, True, True, False]
    assert ledger.reserved == Estimate(3, 600, 300) and ledger.spent == ZERO
    ledger.settle(est, Estimate(1, 50, 10))
    assert ledger.reserved == Estimate(2, 400, 200)
    assert ledger.spent == Estimate(1, 50, 10)
    assert ledger.reserve(est)  # 60 spent + 900 reserved, 4 calls: fits again
    assert not ledger.reserve(Estimate(0, 41, 0))  # 1001 tokens
    assert ledger.reserve(Estimate(0, 40, 0))  # exactly 1000
    for _ in range(3):
        ledger.settle(est, est)
    assert ledger.reserved == Estimate(0, 40, 0)
    assert ledger.spent == Estimate(4, 650, 310)


def test_cost_budget_needs_a_price():
    with pytest.raises(ValueError, match="price"):
        Ledger(Budget(max_cost=1.0), None)
    Ledger(Budget(max_tokens=1), None)  # no price needed without a cost limit


def test_reservations_hold_under_threads():
    ledger = Ledger(Budget(max_calls=100), None)
    granted: list[bool] = []

    def worker() -> None:
        for _ in range(50):
            granted.append(ledger.reserve(Estimate(1, 0, 0)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100 and ledger.reserved.calls == 100
