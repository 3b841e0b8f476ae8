"""Passkeys' settings and migration: the relying party from QUART_APP_WEBAUTHN_RP_ID and QUART_APP_PUBLIC_URL.

Development and testing work on http://localhost with no setting; production
needs a real domain (off until then: the routes answer 404, nothing silently
bound to localhost); an RP ID the public URL is not under stops the start.
"""

from __future__ import annotations

import pytest
from conftest import alembic, db_rows

from quart_app.core.config import ConfigError, load_settings

PRODUCTION = {"QUART_APP_SECRET_KEY": "k" * 40, "QUART_APP_MAIL_URL": "off"}


def test_development_and_testing_use_localhost_without_a_setting():
    for env in ("development", "testing"):
        settings = load_settings(environ={"QUART_APP_ENV": env})
        assert settings.webauthn_rp_id == "localhost", env
        assert settings.webauthn_enabled, env
    testing = load_settings(environ={"QUART_APP_ENV": "testing"})
    assert testing.webauthn_origin == "http://localhost"
    development = load_settings(environ={"QUART_APP_ENV": "development"})
    assert development.webauthn_origin == "http://localhost:5000"


def test_production_takes_the_domain_of_the_public_url_or_the_setting():
    settings = load_settings(environ={**PRODUCTION, "QUART_APP_PUBLIC_URL": "https://app.example.com"})
    assert (settings.webauthn_rp_id, settings.webauthn_origin) == ("app.example.com", "https://app.example.com")
    assert settings.webauthn_enabled
    wider = load_settings(
        environ={
            **PRODUCTION,
            "QUART_APP_PUBLIC_URL": "https://app.example.com",
            "QUART_APP_WEBAUTHN_RP_ID": "Example.COM",
        }
    )
    assert wider.webauthn_rp_id == "example.com"


def test_production_without_a_real_domain_has_passkeys_off():
    settings = load_settings(environ=PRODUCTION)
    assert settings.webauthn_rp_id == "localhost"
    assert not settings.webauthn_enabled


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"QUART_APP_WEBAUTHN_RP_ID": "other.example"}, "must be QUART_APP_PUBLIC_URL's host"),
        ({"QUART_APP_WEBAUTHN_RP_ID": "pp.example.com"}, "must be QUART_APP_PUBLIC_URL's host"),
        ({"QUART_APP_WEBAUTHN_RP_ID": "https://example.com"}, "must be a domain"),
        ({"QUART_APP_WEBAUTHN_RP_ID": "exa mple.com"}, "must be a domain"),
        ({"QUART_APP_WEBAUTHN_CHALLENGE_TTL": "5"}, "WEBAUTHN_CHALLENGE_TTL"),
        ({"QUART_APP_WEBAUTHN_CHALLENGE_TTL": "soon"}, "WEBAUTHN_CHALLENGE_TTL"),
    ],
)
def test_a_relying_party_the_browser_would_refuse_stops_the_start(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={**PRODUCTION, "QUART_APP_PUBLIC_URL": "https://app.example.com", **extra})


async def test_with_passkeys_off_their_routes_answer_404(make_app):
    app = make_app(ENV="production", SECRET_KEY="k" * 40, MAIL_URL="off")
    async with app.test_app():
        client = app.test_client()
        for path in ("/api/webauthn/login/options", "/api/webauthn/login/verify", "/api/webauthn/register/options"):
            response = await client.post(path, json={})
            assert response.status_code == 404, path
            assert await response.get_json() == {"error": "Passkeys are not set up on this site."}
        assert (await client.get("/api/webauthn/credentials")).status_code == 404


def test_the_passkeys_revision_downgrades_and_upgrades(database):
    database.write("INSERT INTO users (username, email, email_key, password_hash) VALUES ('a', 'a@x.com', 'a@x', 'x')")
    database.write(
        "INSERT INTO user_factors (user_id, kind, created_at) SELECT id, 'totp', '2026-01-01 00:00:00' FROM users"
    )
    alembic("downgrade", "mfa_pending", url=database.url)
    tables = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if database.is_sqlite
        else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    assert "webauthn_challenges" not in {name for (name,) in db_rows(database, tables)}
    assert db_rows(database, "SELECT kind FROM user_factors") == [("totp",)]  # the TOTP factor kept
    alembic("upgrade", "head", url=database.url)
    assert "webauthn_challenges" in {name for (name,) in db_rows(database, tables)}
    assert db_rows(database, "SELECT kind, credential_id, sign_count FROM user_factors") == [("totp", None, None)]
