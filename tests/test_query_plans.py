"""The hot queries are index lookups on the suite's backend (scripts/query_plans.py, as docs/query-plans.md shows)."""

from __future__ import annotations

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("query_plans", ROOT / "scripts" / "query_plans.py")
query_plans = importlib.util.module_from_spec(spec)
spec.loader.exec_module(query_plans)


def test_every_hot_query_is_an_index_lookup(backend, tmp_path):
    database = backend.create(tmp_path)
    try:
        plans = query_plans.plans(database.url)
    finally:
        database.drop()
    session_lookup = "\n".join(plans["session lookup (every protected request)"])
    assert len(plans) == 6
    if database.is_sqlite:
        for name, lines in plans.items():
            assert not [line for line in lines if line.startswith("SCAN")], (name, lines)
        assert "SEARCH auth_sessions USING INDEX sqlite_autoindex_auth_sessions_1 (token_hash=?)" in session_lookup
        assert "SEARCH users USING INTEGER PRIMARY KEY (rowid=?)" in session_lookup
    else:
        for name, lines in plans.items():
            assert not [line for line in lines if "Seq Scan" in line], (name, lines)
        assert "Index Scan using auth_sessions_token_hash_key on auth_sessions" in session_lookup
        assert "Index Scan using users_pkey on users" in session_lookup
    login_lookup = "\n".join(plans["login lookup (username or email, any case)"])
    assert "uq_users_username_lower" in login_lookup and "uq_users_email_key" in login_lookup
    with_factor = "\n".join(plans["password login, with whether a second factor follows (every login)"])
    assert "uq_users_username_lower" in with_factor and "uq_users_email_key" in with_factor
    assert "ix_user_factors_user_id" in with_factor
    assert "ix_user_factors_user_id" in "\n".join(plans["second factor of one user (sensitive actions, MFA_REQUIRED)"])
