"""How the relay packs a batch of events into messages (pure logic)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from workers.relay import EVENTS_PER_MESSAGE, SPREAD, pack
from workflow.service_layer.effects import Event

# A batch: each event belongs to one of a few cases; ids number the events in commit order.
batches = st.lists(st.integers(min_value=0, max_value=30), max_size=300).map(
    lambda cases: [Event(f"e{i}", "InquiryRegistered", f"case-{c}") for i, c in enumerate(cases)]
)


@given(batches)
def test_every_event_goes_once_and_each_case_keeps_its_order(events: list[Event]) -> None:
    sent = [event for message in pack(events) for event in message]
    assert sorted(e.event_id for e in sent) == sorted(e.event_id for e in events)
    for case in {e.case_id for e in events}:
        assert [e for e in sent if e.case_id == case] == [e for e in events if e.case_id == case]


@given(batches, st.integers(min_value=1, max_value=10))
def test_a_case_that_fits_is_in_one_message_and_shared_messages_stay_small(
    events: list[Event], spread: int
) -> None:
    messages = pack(events, spread)
    fewest = math.ceil(len(events) / EVENTS_PER_MESSAGE)  # messages a perfect fill would take
    base = math.ceil(len(events) / max(1, min(len(events), max(spread, fewest))))
    assert all(1 <= len(message) <= EVENTS_PER_MESSAGE for message in messages)
    assert all(len(m) <= base for m in messages if len({e.case_id for e in m}) > 1)
    for case in {e.case_id for e in events}:
        holding = [i for i, message in enumerate(messages) if any(e.case_id == case for e in message)]
        count = sum(e.case_id == case for e in events)
        assert len(holding) == math.ceil(count / EVENTS_PER_MESSAGE)
        assert holding == list(range(holding[0], holding[-1] + 1))  # one after another
    # Never more than twice the messages the batch needs (a case is not split to fill).
    assert len(messages) <= 2 * max(fewest, min(len(events), spread))


def test_with_spread_1_a_round_goes_in_as_few_messages_as_hold_it_evenly_filled() -> None:
    events = [Event(f"e{i}", "InquiryRegistered", f"case-{i}") for i in range(40)]
    assert [len(m) for m in pack(events, spread=1)] == [14, 14, 12]  # 40 events: 3 messages
    assert [len(m) for m in pack(events[:5], spread=1)] == [5]
    assert len(pack([Event(f"e{i}", "T", f"c{i}") for i in range(1000)], 1)) == math.ceil(1000 / 16)


def test_by_default_a_small_round_goes_one_event_per_message_and_a_larger_over_spread() -> None:
    assert SPREAD == 8
    events = [Event(f"e{i}", "InquiryRegistered", f"case-{i}") for i in range(40)]
    assert pack(events[:8]) == [[e] for e in events[:8]]
    assert [len(m) for m in pack(events)] == [5] * 8  # 40 events over 8 messages
    assert len(pack([Event(f"e{i}", "T", f"c{i}") for i in range(1000)])) == math.ceil(1000 / 16)


def test_a_case_with_several_events_keeps_them_in_one_message() -> None:
    events = [Event("e1", "T", "a"), Event("e2", "T", "b"), Event("e3", "T", "a")]
    assert pack(events) == [[events[0], events[2]], [events[1]]]
    assert pack(events, spread=1) == [[events[0], events[2], events[1]]]
    many = [Event(f"e{i}", "T", "a") for i in range(40)]
    assert pack(many) == [many[:16], many[16:32], many[32:]]
