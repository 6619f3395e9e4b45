"""OIDC/JWT bearer tokens (optional, by settings): issuer, audience, pinned algorithms, expiry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from config.settings import Settings
from tests.support import advance_to, snapshot_tables
from workflow.api.app import create_app
from workflow.bootstrap import App

ISSUER, AUDIENCE = "https://login.example.org/realms/avrr", "avrr-workflow"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    settings = Settings(
        database_url=str(app.db.url),
        environment="test",
        secret_key="x" * 40,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_public_key=PUBLIC_PEM,
    )
    with TestClient(create_app(app, settings)) as client:
        yield client


def claims(app: App, **overrides: Any) -> dict[str, Any]:
    now = app.clock.now()
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "anna.tamm",
        "exp": now + timedelta(minutes=5),
        "iat": now,
        "avrr_office": "tallinn",
        "avrr_roles": ["caseworker"],
    } | overrides


def get(client: TestClient, case_id: str, token: str) -> int:
    return client.get(f"/cases/{case_id}", headers={"Authorization": f"Bearer {token}"}).status_code


def test_a_valid_token_acts_as_its_subject_with_its_office_and_roles(app: App, client: TestClient) -> None:
    case_id = advance_to(app, "inquiry")
    token = jwt.encode(claims(app), KEY, algorithm="RS256")
    response = client.get(f"/cases/{case_id}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert "submit_application" in response.json()["triggers"]
    kyiv = jwt.encode(claims(app, avrr_office="riga"), KEY, algorithm="RS256")
    assert get(client, case_id, kyiv) == 404  # another office's case


def test_wrong_issuer_audience_expiry_key_or_algorithm_is_refused(app: App, client: TestClient) -> None:
    case_id = advance_to(app, "inquiry")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        "issuer": jwt.encode(claims(app, iss="https://evil.example.org"), KEY, algorithm="RS256"),
        "audience": jwt.encode(claims(app, aud="someone-else"), KEY, algorithm="RS256"),
        "expired": jwt.encode(
            claims(app, exp=app.clock.now() - timedelta(seconds=1)), KEY, algorithm="RS256"
        ),
        "no expiry": jwt.encode({k: v for k, v in claims(app).items() if k != "exp"}, KEY, algorithm="RS256"),
        "other key": jwt.encode(claims(app), other_key, algorithm="RS256"),
        # Algorithm confusion: the public key used as an HMAC secret. Only RS256 is pinned.
        "hs256": _hs256_with_public_key(claims(app)),
        "none": jwt.encode(claims(app), None, algorithm="none"),
    }
    for name, token in refused.items():
        assert get(client, case_id, token) == 401, name


def _hs256_with_public_key(payload: dict[str, Any]) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    body = {k: int(v.timestamp()) if hasattr(v, "timestamp") else v for k, v in payload.items()}
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(body).encode())}"
    )
    signature = hmac.new(PUBLIC_PEM.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize(
    "claim",
    [
        {"avrr_office": "t" * 33},  # wider than any office code: the fire's history row would not hold it
        {"avrr_office": 42},
        {"avrr_office": ["tallinn"]},
        {"avrr_office": "tall\x07inn"},  # a control character
        {"avrr_office": "\ud800"},  # a lone surrogate (JSON-escaped in the token): no database takes it
        {"sub": "anna\ud800"},
        {"avrr_roles": "caseworker"},  # a string, not a list of roles
    ],
)
def test_a_signed_token_whose_office_or_roles_claim_is_malformed_is_refused_and_changes_nothing(
    app: App, client: TestClient, claim: dict[str, Any]
) -> None:
    case_id = advance_to(app, "inquiry")
    token = jwt.encode(claims(app, **claim), KEY, algorithm="RS256")
    before = snapshot_tables(app.db)
    response = client.post(
        f"/cases/{case_id}/transitions/submit_application",
        json={},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 401, response.json()
    after = snapshot_tables(app.db)
    assert {k: v for k, v in after.items() if k != "access_log"} == {
        k: v for k, v in before.items() if k != "access_log"
    }
    # The same token with well-formed claims is served.
    assert get(client, case_id, jwt.encode(claims(app), KEY, algorithm="RS256")) == 200
