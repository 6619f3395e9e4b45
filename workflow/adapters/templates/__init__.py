"""Message templates in en, et, uk and ru (TOML files here), rendered with a declared context.

Each template may use only the keys declared below: case references, dates, office names and
contacts, amounts. A context with a missing or an extra key is refused, so nothing else (a
name, a date of birth, a document number) can reach a message by accident.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import date, datetime
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from string import Template
from typing import Any

from workflow.service_layer.notifications import (
    FALLBACK_LANGUAGE,
    LANGUAGES,
    TemplateContextMismatch,
    UnknownTemplate,
)

_CASE, _DUE = frozenset({"case_ref"}), frozenset({"case_ref", "due_on"})
_TRIP = frozenset({"case_ref", "departure_on", "route"})
_OFFICE, _DESTINATION = frozenset({"case_ref", "office_name"}), frozenset({"case_ref", "destination_office"})

FAMILY: dict[str, frozenset[str]] = {
    "inquiry_registered": _CASE,
    "return_approved": _CASE,
    "return_rejected": _CASE,
    "travel_booked": _TRIP,
    "departure_reminder": _TRIP,
    "arrival_welcome": _OFFICE | {"office_contact", "contact_by"},
    "handover_accepted": _OFFICE,
    "plan_approved": _CASE,
    "grant_disbursed": _CASE | {"category", "amount", "currency"},
    "monitoring_visit_due": frozenset({"case_ref", "next_due_on"}),  # the re-armed visit, ahead
    "case_closed": _CASE,
}
OFFICE: dict[str, frozenset[str]] = {
    "application_submitted": _CASE,
    "handover_received": _DUE | {"origin_office"},
    "handover_escalated": _DUE,
    "handover_accepted": _DESTINATION,
    "handover_refused": _DESTINATION,
    "pre_arrival_notice": _TRIP | {"travellers"},
    "airport_reception": frozenset({"case_ref", "arrival_on", "route", "travellers"}),
    "booking_cancelled": _CASE,
    "no_show": frozenset({"case_ref", "departure_on"}),
    "reception_off": frozenset({"case_ref", "departure_on"}),
    "arrival_confirmed": frozenset({"case_ref", "arrival_on", "destination_office"}),
    "departure_confirmed": frozenset({"case_ref", "departure_on"}),
    "case_withdrawn": _CASE,
    "returnee_contact_overdue": _DUE,
    "plan_drafting_overdue": _DUE,
    "plan_submitted": _CASE,
    "plan_approved": _CASE,
    "plan_returned": _CASE,
    "monitoring_visit_overdue": _DUE,
    "case_lapsed": _CASE,
    "case_closed": _CASE,
}
# Template names are "<audience>.<subject>": the effect's subject, under the family or office.
CONTEXT_KEYS: dict[str, frozenset[str]] = {
    **{f"family.{name}": keys for name, keys in FAMILY.items()},
    **{f"office.{name}": keys for name, keys in OFFICE.items()},
}
CATEGORIES = ("business", "education", "housing", "medical", "vocational_training", "other")


class Templates:
    """Implements the ``Renderer`` port; a language without a template falls back to English."""

    def __init__(self, directory: Traversable | None = None) -> None:
        root = directory or resources.files(__name__)
        self.catalogues: dict[str, dict[str, Any]] = {
            language: tomllib.loads((root / f"{language}.toml").read_text("utf-8")) for language in LANGUAGES
        }

    def entry(self, template_name: str, language: str) -> Mapping[str, str] | None:
        audience, _, subject = template_name.partition(".")
        entry = self.catalogues.get(language, {}).get(audience, {}).get(subject)
        return entry if isinstance(entry, dict) else None

    def keys(self, template_name: str) -> frozenset[str]:
        if template_name not in CONTEXT_KEYS:
            raise UnknownTemplate(template_name)
        return CONTEXT_KEYS[template_name]

    def render(self, template_name: str, language: str, context: Mapping[str, object]) -> tuple[str, str]:
        declared = CONTEXT_KEYS.get(template_name)
        if declared is None:
            raise UnknownTemplate(template_name)
        given = frozenset(context)
        if given != declared:
            raise TemplateContextMismatch(template_name, declared - given, given - declared)
        if self.entry(template_name, language) is None:
            language = FALLBACK_LANGUAGE
        entry = self.entry(template_name, language)
        if entry is None:
            raise UnknownTemplate(template_name)
        categories = self.catalogues[language].get("categories", {})
        values = {key: _text(key, value, categories) for key, value in context.items()}
        return Template(entry["subject"]).substitute(values), Template(entry["body"]).substitute(values)


def _text(key: str, value: object, categories: Mapping[str, str]) -> str:
    if key == "category" and isinstance(value, str):
        return categories.get(value, value)
    if isinstance(value, datetime | date):
        return value.isoformat()[:10]
    # A value never breaks a line: an e-mail subject with a newline would inject headers.
    return " ".join(str(value).split())


@cache
def default_templates() -> Templates:
    return Templates()


def render(template_name: str, language: str, context: Mapping[str, object]) -> tuple[str, str]:
    return default_templates().render(template_name, language, context)
