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
    BudgetExceeded,
    Estimate,
    Ledger,
    MediaRates,
    PlanRow,
    Price,
    call_estimate,
    cost_plan,
    example_text,
    examples_estimate,
    load_prices,
    media_tokens,
    plan_table,
    price_for,
    text_tokens,
    usage,
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


# --- batch prices, media rates, the run-level ledger and the dry-run plan (issue 22:
# mutation survivors of synth/budget.py), each against numbers worked by hand.

RATES = MediaRates(image=100, audio_s=10, video_s=20, page=50)


def test_batch_price_halves_unless_the_table_says_otherwise():
    assert Price(input=1.0, output=3.0).batch() == Price(input=0.5, output=1.5)
    listed = Price(input=1.0, output=3.0, batch_input=0.2, batch_output=0.9)
    assert listed.batch() == Price(input=0.2, output=0.9)
    free = Price(input=1.0, output=3.0, batch_input=0.0, batch_output=0.0)
    assert free.batch() == Price(input=0.0, output=0.0)  # a listed 0 is not "unset"
    assert Price(input=1.0, output=2.0, media=RATES).batch().media == RATES


def test_prices_are_per_million_tokens_exactly():
    # a relative error of one in a million is a real mispricing at scale; approx hides it
    assert Price(input=2.0, output=4.0).cost(500_000, 250_000) == pytest.approx(2.0, rel=1e-12)


def test_media_tokens_use_the_models_own_rates():
    assert media_tokens({"modality": "image", "parts": [{"height": 1000, "width": 700}]},
                        RATES) == 100 * 2
    assert media_tokens({"modality": "image", "parts": []}, RATES) == 100
    assert media_tokens({"modality": "page", "parts": []}, RATES) == 50  # the page floor
    assert media_tokens({"modality": "page", "parts": [{"height": 10, "width": 10}]},
                        RATES) == 100  # a rendered page is an image tile
    audio = {"modality": "audio", "metadata": json.dumps({"duration_s": 10})}
    assert media_tokens(audio, RATES) == 100
    video = {"modality": "video", "metadata": json.dumps({"duration_s": 10})}
    assert media_tokens(video, RATES) == 200


def test_media_tokens_count_only_real_pictures():
    # a size without both sides and without pixels is not a picture: the floor
    assert media_tokens({"modality": "image", "parts": [{"height": 2000}]}) == 258
    assert media_tokens({"modality": "image", "parts": [{"width": 2000}]}) == 258
    assert media_tokens({"modality": "page", "parts": [{"height": 2000}]}, RATES) == 50
    assert media_tokens({"modality": "page", "parts": [{"width": 2000}]}, RATES) == 50
    # pixels with one side known: the other side counts as one tile (768 px)
    assert media_tokens({"modality": "image", "parts": [{"pixels": b"x", "height": 1600}]}) \
        == 258 * 3
    assert media_tokens({"modality": "page", "parts": [{"pixels": b"x", "width": 1600}]}) \
        == 258 * 3
    inter = {"modality": "interleaved", "parts": [
        {"pixels": b"x"}, {"height": 2000, "width": 2000}, {"text": "words"},
        {"pixels": b"y", "height": 1537, "width": 10}]}
    assert media_tokens(inter) == 258 + 258 * 3
    assert media_tokens({"modality": "interleaved", "parts": [{"text": "only"}]}) == 0
    assert media_tokens({"modality": "interleaved"}) == 0


def test_media_tokens_unknown_length_from_size():
    video = {"modality": "video", "metadata": json.dumps({"duration_s": None}),
             "size_bytes": 1_600_000}
    assert media_tokens(video) == 100 * 263  # 1.6 MB at 16 KB per second
    not_a_dict = {"modality": "audio", "metadata": "[1, 2]", "size_bytes": 10}
    assert media_tokens(not_a_dict) == 30 * 32
    assert media_tokens({"modality": "audio", "metadata": None}) == 30 * 32
    # a known short clip is its length, not the 30 s guess
    one = {"modality": "audio", "metadata": json.dumps({"duration_s": 1})}
    assert media_tokens(one) == 32
    assert media_tokens({**one, "metadata": json.dumps({"duration_s": 0.5})}) == 16


def test_examples_estimate_sends_every_example_and_the_extra_text():
    prompt = "p" * 20  # 10 tokens
    a = {"modality": "text", "parts": [{"text": "a" * 8}]}  # 4
    b = {"modality": "image", "parts": [{"text": "b" * 6}, {"height": 10, "width": 10}]}
    est = examples_estimate([a, b], prompt, 16, with_repair=False, extra_text="e" * 6,
                            rates=RATES)
    assert est == Estimate(1, 10 + 3 + 4 + 3 + 100, 16)
    inp = 10 + 3 + 4 + 3 + 100  # the repair call is reserved unless turned off
    assert examples_estimate([a, b], prompt, 16, extra_text="e" * 6, rates=RATES) == Estimate(
        2, inp + inp + 16 + REPAIR_OVERHEAD_TOKENS, 32)
    img = {"modality": "image", "parts": [{"height": 100, "width": 100}]}
    assert call_estimate(img, prompt, 8, with_repair=False, rates=RATES) == Estimate(1, 110, 8)
    assert call_estimate(img, prompt, 8, rates=RATES) == Estimate(
        2, 110 + 110 + 8 + REPAIR_OVERHEAD_TOKENS, 16)


def test_usage_prices_what_was_spent():
    stats = {"llm_calls": 3, "requests": 5, "input_tokens": 1000, "output_tokens": 200,
             "cache_hits": 9}
    assert usage(stats, PRICE) == {"llm_calls": 3, "requests": 5, "input_tokens": 1000,
                                   "output_tokens": 200, "cost_usd": 0.0008}
    assert usage({}, None) == {"llm_calls": 0, "requests": 0, "input_tokens": 0,
                               "output_tokens": 0, "cost_usd": None}
    # rounded to the micro-dollar: 1 token at 0.40 USD / 1M is 0.0000004 USD
    assert usage({"input_tokens": 1}, Price(input=0.4, output=1.0))["cost_usd"] == 0.0


def test_budget_exceeded_carries_its_payload():
    payload = {"counts": {"pairs": 2}, "exit": 3}
    err = BudgetExceeded(payload)
    assert err.payload is payload
    assert str(err) == "stopped by the LLM budget: {'pairs': 2}"


def test_plan_reserves_what_fits_in_key_order():
    ledger = Ledger(Budget(max_calls=3), None)
    pending = {"c": Estimate(1, 0, 0), "b": Estimate(5, 0, 0), "a": Estimate(2, 0, 0)}
    assert ledger.plan(pending) == ["a", "c"]  # b does not fit; c after it still does
    assert ledger.reserved == Estimate(3, 0, 0)
    assert ledger.plan({"d": Estimate(1, 0, 0)}) == []


def test_settle_run_releases_everything_and_books_the_usage():
    ledger = Ledger(Budget(max_calls=3, max_tokens=1000), PRICE)
    assert ledger.plan({"a": Estimate(1, 300, 100), "b": Estimate(1, 300, 100)}) == ["a", "b"]
    spent = {"requests": 3, "input_tokens": 500, "output_tokens": 400}
    ledger.settle_run(spent)
    assert ledger.reserved == ZERO and ledger.spent == Estimate(3, 500, 400)
    assert spent["within_budget"] is True
    over = Ledger(Budget(max_calls=2), None)
    spent = {"requests": 3, "input_tokens": 0, "output_tokens": 0}
    over.settle_run(spent)
    assert spent["within_budget"] is False and over.spent == Estimate(3, 0, 0)


def _plan_rows() -> dict[str, PlanRow]:
    return {"text": PlanRow(examples=2, calls=4, media_tokens=0, worst=Estimate(4, 1000, 400)),
            "image": PlanRow(examples=1, calls=2, media_tokens=258,
                             worst=Estimate(2, 2000, 200))}


def test_cost_plan_by_hand():
    price = Price(input=1.0, output=10.0)  # batch: 0.5 / 5.0
    plan = cost_plan(_plan_rows(), price)
    assert plan == {"mode": "online", "cost_usd_for_mode": 0.009, "modalities": {
        "image": {"examples": 1, "calls": 2, "media_tokens": 258, "input_tokens": 2000,
                  "output_tokens": 200, "online_usd": 0.004, "batch_usd": 0.002},
        "text": {"examples": 2, "calls": 4, "media_tokens": 0, "input_tokens": 1000,
                 "output_tokens": 400, "online_usd": 0.005, "batch_usd": 0.0025},
        "total": {"examples": 3, "calls": 6, "media_tokens": 258, "input_tokens": 3000,
                  "output_tokens": 600, "online_usd": 0.009, "batch_usd": 0.0045}}}
    assert list(plan["modalities"]) == ["image", "text", "total"]
    assert cost_plan(_plan_rows(), price, mode="batch")["cost_usd_for_mode"] == 0.0045
    # 1 input token at 0.40 USD / 1M rounds to 0 at the micro-dollar
    tiny = cost_plan({"text": PlanRow(1, 1, 0, Estimate(1, 1, 0))}, Price(input=0.4, output=1))
    assert tiny["modalities"]["text"]["online_usd"] == 0.0
    unpriced = cost_plan(_plan_rows(), None, mode="batch")
    assert unpriced["cost_usd_for_mode"] is None
    assert {r["online_usd"] for r in unpriced["modalities"].values()} == {None}
    assert {r["batch_usd"] for r in unpriced["modalities"].values()} == {None}


def test_plan_table_by_hand():
    table = plan_table(cost_plan(_plan_rows(), Price(input=1.0, output=10.0)))
    assert table.splitlines() == [
        "modality  examples  calls  media_tokens  input_tokens  output_tokens  online_usd  batch_usd",
        "image            1      2           258          2000            200      0.0040     0.0020",
        "text             2      4             0          1000            400      0.0050     0.0025",
        "total            3      6           258          3000            600      0.0090     0.0045",
    ]
    unpriced = plan_table(cost_plan({"audio": PlanRow(1, 1, 960, Estimate(1, 960, 8))}, None))
    assert unpriced.splitlines()[1].split() == ["audio", "1", "1", "960", "960", "8", "-", "-"]
