"""Log redaction: personal keys and personal-looking text are removed, identifiers are kept."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import date

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from config.logging import PERSONAL_KEYS, REDACTED, configure_logging, redact_personal_data, scrub_text
from workflow.domain.records import HouseholdMember

NAME = "Oleksandra Zhyvotovska-Kvitka"
CASE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
PERSONAL_TEXT = {
    "e-mail": "o.kvitka+avrr@mail.example.ua",
    "international phone": "+380 44 123 4567",
    "local phone": "(044) 123-45-67",
    "national id code": "38001085718",
    "iso date": "1987-03-14",
    "iso timestamp of a birth date": "1987-03-14T00:00:00Z",
    "date glued to a word": "dob_1987-03-14",
    "estonian mobile": "5123456",
    "estonian mobile, spaced": "512 3456",
    "passport number": "FB1234567",
    "residence permit": "A1234567",
}


def redact(**event: object) -> dict[str, object]:
    return dict(redact_personal_data(None, "info", dict(event)))


@pytest.mark.parametrize("key", sorted(PERSONAL_KEYS))
def test_values_of_personal_keys_are_redacted_at_any_depth(key):
    event = redact(
        event="case.registered", **{key: NAME}, data={"nested": {key: NAME}, "list": [{key: NAME}]}
    )

    assert event[key] == REDACTED
    assert event["data"] == {"nested": {key: REDACTED}, "list": [{key: REDACTED}]}


def test_personal_keys_holding_structures_are_redacted_whole():
    event = redact(event="x", members=[{"full_name": NAME, "relationship": "principal"}], case_id=CASE_ID)
    assert event["members"] == REDACTED
    assert NAME not in json.dumps(event)


@pytest.mark.parametrize("kind", sorted(PERSONAL_TEXT))
def test_personal_looking_text_is_scrubbed_inside_free_text(kind):
    value = PERSONAL_TEXT[kind]
    text = f"family asked to be called at {value}, please."
    scrubbed = scrub_text(text)

    assert REDACTED in scrubbed
    assert not re.search(r"\d", scrubbed)
    assert scrubbed.startswith("family asked to be called at ")
    assert redact(event=text)["event"] == scrubbed
    assert value not in json.dumps(redact(event="x", comment={"remark": [text]}))


def test_every_kind_of_personal_text_in_one_message_is_scrubbed():
    scrubbed = scrub_text(" / ".join(PERSONAL_TEXT.values()))
    assert scrubbed.count(REDACTED) == len(PERSONAL_TEXT)
    assert not re.search(r"\d", scrubbed)


@pytest.mark.parametrize(
    "text",
    [
        "case moved from inquiry to application_submitted",
        "disbursed 1450.00 EUR against line 2 of 4",
        "version 12 of case",
        "route TLL-WAW, rail to Kyiv",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert scrub_text(text) == text


# A uuid4 of hex digits only (odds ~1e-6) would read as a phone number; real ids are not that.
@given(case_uuid=st.uuids(version=4).filter(lambda u: any(c.isalpha() for c in str(u))))
def test_uuids_in_free_text_are_left_intact(case_uuid):
    text = f"case {case_uuid} moved; see {case_uuid}"
    assert scrub_text(text) == text


@pytest.mark.parametrize("key", ["case_id", "event_id", "request_id", "actor_id", "member_id"])
def test_identifier_keys_keep_their_values_even_when_they_look_personal(key):
    value = "2026-11-28-+380441234567"
    assert redact(event="x", **{key: value})[key] == value


def test_ids_nested_in_structures_survive_redaction():
    other = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
    event = redact(event="x", data={"case_id": CASE_ID, "ids": [other]}, id=CASE_ID)
    assert event["data"] == {"case_id": CASE_ID, "ids": [other]}
    assert event["id"] == CASE_ID


def test_nested_identifier_keys_keep_their_values():
    event = redact(event="x", request={"request_id": "2026-11-28-0001"})
    assert event["request"] == {"request_id": "2026-11-28-0001"}


def test_a_logged_record_object_does_not_carry_its_personal_fields_into_the_output():
    member = HouseholdMember("m-1", NAME, date(1987, 3, 14), "principal")
    rendered = structlog.processors.JSONRenderer()(None, "info", redact(event="x", member=member))
    assert NAME not in rendered


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "transitions", "alembic")}
    config = structlog.get_config()
    yield
    root.handlers[:] = [
        h for h in root.handlers if not isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
    ]
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()
    structlog.configure(**config)


def _log_personal_data() -> None:
    log = structlog.get_logger("tests.unit.test_logging")
    log.info(
        "case.registered",
        case_id=CASE_ID,
        full_name=NAME,
        members=[{"full_name": NAME, "date_of_birth": "1987-03-14"}],
        remark="reach her at " + ", ".join(PERSONAL_TEXT.values()),
    )
    logging.getLogger("some.library").warning("sent to %s", PERSONAL_TEXT["e-mail"])


def test_json_logs_parse_and_carry_no_personal_data(capsys, restore_logging):
    configure_logging(json=True)
    _log_personal_data()

    output = capsys.readouterr().err
    records = [json.loads(line) for line in output.strip().splitlines()]

    assert [r["event"] for r in records] == ["case.registered", f"sent to {REDACTED}"]
    assert records[0]["case_id"] == CASE_ID
    assert records[0]["level"] == "info"
    assert records[1]["logger"] == "some.library"
    for secret in (NAME, *PERSONAL_TEXT.values()):
        assert secret not in output


def test_console_logs_carry_no_personal_data_either(capsys, restore_logging):
    configure_logging(json=False)
    _log_personal_data()

    output = capsys.readouterr().err
    assert "case.registered" in output
    assert CASE_ID in output
    for secret in (NAME, *PERSONAL_TEXT.values()):
        assert secret not in output


def test_id_like_keys_outside_the_engines_own_are_scrubbed():
    event = redact(event="x", passport_id="38001085718", national_id="EE38001085718", case_id="c-1")
    assert event["passport_id"] == event["national_id"] == "[redacted]"
    assert event["case_id"] == "c-1"


def test_personal_keys_are_recognised_in_any_case_or_spelling():
    event = redact(event="x", fullName="Olena K", DateOfBirth="1987-03-14", EMAIL="o@example.org")
    assert {event["fullName"], event["DateOfBirth"], event["EMAIL"]} == {"[redacted]"}


def test_day_month_year_dates_are_scrubbed_from_free_text():
    assert "14.03.1987" not in redact(event="born 14.03.1987, arrived 2/5/2024")["event"]
    assert "2/5/2024" not in redact(event="born 14.03.1987, arrived 2/5/2024")["event"]
