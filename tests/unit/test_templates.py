"""Message templates: every one in every language, worded from its declared context and nothing else."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from string import Template

import pytest

from config.logging import PERSONAL_KEYS
from workflow.adapters.templates import CATEGORIES, CONTEXT_KEYS, Templates, default_templates
from workflow.domain.effects import EFFECTS, NOTIFY_FAMILY, NOTIFY_OFFICE
from workflow.service_layer.notifications import LANGUAGES, TemplateContextMismatch, UnknownTemplate

NAMES = sorted(CONTEXT_KEYS)
SAMPLE_VALUES: dict[str, object] = {
    "case_ref": "C-7F3A",
    "departure_on": date(2026, 12, 3),
    "arrival_on": date(2026, 12, 3),
    "due_on": date(2027, 3, 3),
    "next_due_on": date(2027, 6, 1),
    "contact_by": date(2027, 3, 3),
    "route": "TLL-WAW-KBP",
    "office_name": "IOM Kyiv",
    "office_contact": "+380 44 000 0000",
    "origin_office": "IOM Tallinn",
    "destination_office": "IOM Kyiv",
    "travellers": 4,
    "category": "education",
    "amount": Decimal("120.00"),
    "currency": "EUR",
}
SMS_LIMIT = 300  # characters: a family message must stay short enough for a few SMS parts


def context_for(name: str) -> dict[str, object]:
    return {key: SAMPLE_VALUES[key] for key in CONTEXT_KEYS[name]}


@pytest.fixture(scope="module")
def templates() -> Templates:
    return default_templates()


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", NAMES)
def test_every_template_exists_in_every_language_with_exactly_its_declared_keys(
    templates: Templates, name: str, language: str
) -> None:
    entry = templates.entry(name, language)
    assert entry is not None, f"{name} is missing in {language}.toml"
    used = set()
    for part in ("subject", "body"):
        template = Template(entry[part])
        assert template.is_valid(), f"{name}/{language}: a stray $ in the {part}"
        used |= set(template.get_identifiers())
    assert used == CONTEXT_KEYS[name]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", NAMES)
def test_every_template_renders_with_its_declared_context(
    templates: Templates, name: str, language: str
) -> None:
    subject, body = templates.render(name, language, context_for(name))
    assert "$" not in subject + body
    assert "\n" not in subject
    assert "C-7F3A" in subject + body
    if name.startswith("family."):
        assert len(body) <= SMS_LIMIT


@pytest.mark.parametrize("language", LANGUAGES)
def test_language_files_hold_no_undeclared_templates_and_every_category(
    templates: Templates, language: str
) -> None:
    catalogue = templates.catalogues[language]
    found = {
        f"{audience}.{name}" for audience in ("family", "office") for name in catalogue.get(audience, {})
    }
    assert found == set(CONTEXT_KEYS)
    assert set(catalogue["categories"]) == set(CATEGORIES)


def test_every_notification_effect_has_a_template() -> None:
    audiences = {NOTIFY_FAMILY: "family", NOTIFY_OFFICE: "office"}
    needed = {
        f"{audiences[effect.kind]}.{effect.subject}"
        for effects in EFFECTS.values()
        for effect in effects
        if effect.kind in audiences
    }
    assert needed <= set(CONTEXT_KEYS)


def test_no_template_may_ask_for_personal_data() -> None:
    declared = set().union(*CONTEXT_KEYS.values())
    assert not declared & PERSONAL_KEYS
    assert not declared & {"full_name", "date_of_birth", "document_number", "members", "relationship"}


def test_a_context_with_an_extra_key_is_refused_so_nothing_leaks(templates: Templates) -> None:
    context = {**context_for("family.case_closed"), "full_name": "Someone"}
    with pytest.raises(TemplateContextMismatch) as refused:
        templates.render("family.case_closed", "en", context)
    assert refused.value.extra == {"full_name"}
    assert "Someone" not in str(refused.value)


def test_a_context_with_a_missing_key_is_refused(templates: Templates) -> None:
    with pytest.raises(TemplateContextMismatch) as refused:
        templates.render("family.travel_booked", "en", {"case_ref": "C-1", "route": "TLL-KBP"})
    assert refused.value.missing == {"departure_on"}


def test_an_unknown_template_is_refused(templates: Templates) -> None:
    with pytest.raises(UnknownTemplate):
        templates.render("family.lottery_won", "en", {"case_ref": "C-1"})


def test_a_language_without_templates_falls_back_to_english(templates: Templates) -> None:
    context = context_for("family.travel_booked")
    assert templates.render("family.travel_booked", "de", context) == templates.render(
        "family.travel_booked", "en", context
    )


def test_categories_are_worded_in_the_recipients_language_and_dates_are_iso(templates: Templates) -> None:
    _, uk = templates.render("family.grant_disbursed", "uk", context_for("family.grant_disbursed"))
    assert "освіта" in uk and "120.00 EUR" in uk
    subject, _ = templates.render("family.travel_booked", "et", context_for("family.travel_booked"))
    assert "2026-12-03" in subject


def test_a_value_with_a_line_break_cannot_inject_a_header(templates: Templates) -> None:
    context = {**context_for("office.no_show"), "case_ref": "C-1\r\nBcc: someone@example.org"}
    subject, _ = templates.render("office.no_show", "en", context)
    assert "\n" not in subject and "\r" not in subject
