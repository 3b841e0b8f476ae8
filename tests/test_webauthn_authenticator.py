"""The software WebAuthn authenticator (tests/webauthn_authenticator.py), proved against py_webauthn itself.

No app is involved: py_webauthn generates the options and verifies the responses, as the app's server side
does. Genuine ceremonies must verify; each forgery the authenticator can produce (wrong origin, wrong RP ID
hash, another challenge, no user verification, no user presence, a replayed signature counter, another
credential's key) must be refused.
"""

from __future__ import annotations

import hashlib
import json

import cbor2
import pytest
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidRegistrationResponse
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)
from webauthn_authenticator import (
    ExcludedCredential,
    NoCredential,
    NotSupported,
    SoftAuthenticator,
    b64url_decode,
    parse_authenticator_data,
)

ORIGIN = "http://localhost"
RP_ID = "localhost"


def registration_options(user_id: bytes = b"user-1", user_name: str = "alice@example.com", **kwargs):
    """Options as the app makes them: discoverable preferred, user verification required."""
    options = generate_registration_options(
        rp_id=RP_ID,
        rp_name="Quart Login",
        user_id=user_id,
        user_name=user_name,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        **kwargs,
    )
    return options, json.loads(options_to_json(options))


def authentication_options(**kwargs):
    options = generate_authentication_options(
        rp_id=RP_ID, user_verification=UserVerificationRequirement.REQUIRED, **kwargs
    )
    return options, json.loads(options_to_json(options))


def verify_registration(options, response, **kwargs):
    params = {
        "credential": response,
        "expected_challenge": options.challenge,
        "expected_origin": ORIGIN,
        "expected_rp_id": RP_ID,
        "require_user_verification": True,
    }
    return verify_registration_response(**(params | kwargs))


def verify_authentication(options, response, public_key: bytes, sign_count: int = 0, **kwargs):
    params = {
        "credential": response,
        "expected_challenge": options.challenge,
        "expected_origin": ORIGIN,
        "expected_rp_id": RP_ID,
        "credential_public_key": public_key,
        "credential_current_sign_count": sign_count,
        "require_user_verification": True,
    }
    return verify_authentication_response(**(params | kwargs))


def register(authenticator: SoftAuthenticator, user_id: bytes = b"user-1", **kwargs):
    options, options_json = registration_options(user_id=user_id, **kwargs)
    return verify_registration(options, authenticator.create(options_json))


# -- genuine ceremonies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json_text", [False, True], ids=["dict", "json-text"])
def test_registration_then_authentication_verify(as_json_text):
    authenticator = SoftAuthenticator()
    options, options_json = registration_options()
    response = authenticator.create(options_json)
    registered = verify_registration(options, json.dumps(response) if as_json_text else response)

    [stored] = authenticator.credentials
    assert registered.credential_id == stored.id
    assert registered.credential_public_key == stored.public_key_cose
    assert registered.sign_count == 0
    assert registered.user_verified is True
    assert registered.fmt == "none"
    assert registered.aaguid == "00000000-0000-0000-0000-000000000000"

    options, options_json = authentication_options()
    assertion = authenticator.get(options_json)
    verified = verify_authentication(
        options, json.dumps(assertion) if as_json_text else assertion, registered.credential_public_key
    )
    assert verified.credential_id == stored.id
    assert verified.new_sign_count == 1
    assert verified.user_verified is True
    assert stored.counter == 1


def test_counter_increments_across_assertions():
    authenticator = SoftAuthenticator()
    registered = register(authenticator)
    sign_count = registered.sign_count
    for expected in (1, 2, 3):
        options, options_json = authentication_options()
        verified = verify_authentication(
            options, authenticator.get(options_json), registered.credential_public_key, sign_count
        )
        assert verified.new_sign_count == expected
        sign_count = verified.new_sign_count


def test_registration_response_shape():
    authenticator = SoftAuthenticator(aaguid=bytes(range(16)))
    _, options_json = registration_options()
    response = authenticator.create(options_json)

    assert set(response) == {"id", "rawId", "type", "response", "clientExtensionResults", "authenticatorAttachment"}
    assert response["type"] == "public-key"
    assert response["id"] == response["rawId"]
    assert response["clientExtensionResults"] == {}
    assert response["authenticatorAttachment"] == "platform"
    assert set(response["response"]) == {"clientDataJSON", "attestationObject", "transports"}
    assert response["response"]["transports"] == ["internal"]
    for value in (response["id"], response["response"]["clientDataJSON"], response["response"]["attestationObject"]):
        assert "=" not in value and "+" not in value and "/" not in value  # base64url, unpadded

    client_data = json.loads(b64url_decode(response["response"]["clientDataJSON"]))
    assert client_data == {
        "type": "webauthn.create",
        "challenge": options_json["challenge"],
        "origin": ORIGIN,
        "crossOrigin": False,
    }

    attestation = cbor2.loads(b64url_decode(response["response"]["attestationObject"]))
    assert attestation["fmt"] == "none" and attestation["attStmt"] == {}
    auth_data = parse_authenticator_data(attestation["authData"])
    assert auth_data["rp_id_hash"] == hashlib.sha256(RP_ID.encode()).digest()
    assert auth_data["up"] and auth_data["uv"] and auth_data["at"]
    assert auth_data["flags"] == 0x45
    assert auth_data["sign_count"] == 0
    assert auth_data["aaguid"] == bytes(range(16))
    credential_id = b64url_decode(response["id"])
    assert auth_data["credential_id"] == credential_id
    assert 16 <= len(credential_id) <= 32
    [stored] = authenticator.credentials
    assert set(auth_data["cose_key"]) == {1, 3, -1, -2, -3}
    assert auth_data["cose_key"][1] == 2 and auth_data["cose_key"][3] == -7 and auth_data["cose_key"][-1] == 1
    assert auth_data["credential_public_key"] == stored.public_key_cose
    assert stored.rp_id == RP_ID
    assert stored.user_handle == b"user-1"
    assert stored.user_name == "alice@example.com"
    assert stored.counter == 0


def test_authentication_response_shape():
    authenticator = SoftAuthenticator()
    register(authenticator)
    _, options_json = authentication_options()
    assertion = authenticator.get(options_json)

    assert set(assertion) == {"id", "rawId", "type", "response", "clientExtensionResults", "authenticatorAttachment"}
    assert assertion["type"] == "public-key" and assertion["authenticatorAttachment"] == "platform"
    assert set(assertion["response"]) == {"clientDataJSON", "authenticatorData", "signature", "userHandle"}
    assert b64url_decode(assertion["response"]["userHandle"]) == b"user-1"
    client_data = json.loads(b64url_decode(assertion["response"]["clientDataJSON"]))
    assert client_data["type"] == "webauthn.get" and client_data["challenge"] == options_json["challenge"]
    auth_data = parse_authenticator_data(b64url_decode(assertion["response"]["authenticatorData"]))
    assert auth_data["flags"] == 0x05  # UP | UV, no attested credential data
    assert auth_data["sign_count"] == 1


def test_uv_false_passes_when_not_required():
    """Only the UV flag changes: a server that does not require user verification accepts it."""
    authenticator = SoftAuthenticator(user_verification=False)
    options, options_json = registration_options()
    registered = verify_registration(options, authenticator.create(options_json), require_user_verification=False)
    assert registered.user_verified is False
    options, options_json = authentication_options()
    verified = verify_authentication(
        options,
        authenticator.get(options_json),
        registered.credential_public_key,
        require_user_verification=False,
    )
    assert verified.user_verified is False and verified.new_sign_count == 1


def test_other_origin_configured_on_the_authenticator():
    authenticator = SoftAuthenticator(origin="https://app.example")
    options, options_json = registration_options()
    registered = verify_registration(options, authenticator.create(options_json), expected_origin="https://app.example")
    options, options_json = authentication_options()
    verify_authentication(
        options,
        authenticator.get(options_json),
        registered.credential_public_key,
        expected_origin="https://app.example",
    )


def test_challenge_override_with_the_expected_challenge_verifies():
    authenticator = SoftAuthenticator()
    options, options_json = registration_options()
    verify_registration(options, authenticator.create(options_json, challenge=options.challenge))


# -- forgeries py_webauthn must refuse ---------------------------------------------------------------------


def test_registration_wrong_origin_refused():
    options, options_json = registration_options()
    response = SoftAuthenticator().create(options_json, origin="https://evil.example")
    with pytest.raises(InvalidRegistrationResponse, match="origin"):
        verify_registration(options, response)


def test_registration_wrong_rp_id_refused():
    options, options_json = registration_options()
    response = SoftAuthenticator().create(options_json, rp_id="evil.example")
    with pytest.raises(InvalidRegistrationResponse, match="RP ID hash"):
        verify_registration(options, response)


def test_registration_other_challenge_refused():
    options, options_json = registration_options()
    other, _ = registration_options()
    response = SoftAuthenticator().create(options_json, challenge=other.challenge)
    with pytest.raises(InvalidRegistrationResponse, match="challenge"):
        verify_registration(options, response)


def test_registration_without_user_verification_refused():
    options, options_json = registration_options()
    response = SoftAuthenticator().create(options_json, uv=False)
    with pytest.raises(InvalidRegistrationResponse, match="User verification is required"):
        verify_registration(options, response)


def test_registration_without_user_presence_refused():
    options, options_json = registration_options()
    response = SoftAuthenticator(user_present=False).create(options_json)
    with pytest.raises(InvalidRegistrationResponse, match="User presence"):
        verify_registration(options, response)


@pytest.fixture
def registered():
    authenticator = SoftAuthenticator()
    return authenticator, register(authenticator)


def test_authentication_wrong_origin_refused(registered):
    authenticator, registration = registered
    options, options_json = authentication_options()
    assertion = authenticator.get(options_json, origin="http://localhost:8080")
    with pytest.raises(InvalidAuthenticationResponse, match="origin"):
        verify_authentication(options, assertion, registration.credential_public_key)


def test_authentication_wrong_rp_id_refused(registered):
    authenticator, registration = registered
    options, options_json = authentication_options()
    assertion = authenticator.get(options_json, rp_id="evil.example")
    with pytest.raises(InvalidAuthenticationResponse, match="RP ID hash"):
        verify_authentication(options, assertion, registration.credential_public_key)


def test_authentication_other_challenge_refused(registered):
    authenticator, registration = registered
    options, options_json = authentication_options()
    stale, stale_json = authentication_options()
    assertion = authenticator.get(stale_json)  # answers another (e.g. an earlier) challenge
    with pytest.raises(InvalidAuthenticationResponse, match="challenge"):
        verify_authentication(options, assertion, registration.credential_public_key)
    verify_authentication(stale, assertion, registration.credential_public_key)  # genuine for its own challenge


def test_authentication_without_user_verification_refused(registered):
    authenticator, registration = registered
    options, options_json = authentication_options()
    assertion = authenticator.get(options_json, uv=False)
    with pytest.raises(InvalidAuthenticationResponse, match="User verification is required"):
        verify_authentication(options, assertion, registration.credential_public_key)


def test_authentication_without_user_presence_refused(registered):
    authenticator, registration = registered
    authenticator.user_present = False
    options, options_json = authentication_options()
    assertion = authenticator.get(options_json)
    with pytest.raises(InvalidAuthenticationResponse, match="not present"):
        verify_authentication(options, assertion, registration.credential_public_key)


def test_authentication_with_another_credentials_key_refused(registered):
    authenticator, registration = registered
    other = register(SoftAuthenticator(), user_id=b"user-2")
    options, options_json = authentication_options()
    assertion = authenticator.get(options_json)
    with pytest.raises(InvalidAuthenticationResponse, match="signature"):
        verify_authentication(options, assertion, other.credential_public_key)


def test_cloned_authenticator_counter_regression_refused(registered):
    authenticator, registration = registered
    stale = authenticator.clone()
    assert [c.id for c in stale.credentials] == [c.id for c in authenticator.credentials]

    options, options_json = authentication_options()
    first = verify_authentication(options, authenticator.get(options_json), registration.credential_public_key)
    assert first.new_sign_count == 1
    options, options_json = authentication_options()
    second = verify_authentication(
        options, authenticator.get(options_json), registration.credential_public_key, first.new_sign_count
    )
    assert second.new_sign_count == 2

    # The stale copy still counts from 0: its next assertion says 1, which the server has already seen.
    options, options_json = authentication_options()
    assertion = stale.get(options_json)
    with pytest.raises(InvalidAuthenticationResponse, match="sign count"):
        verify_authentication(options, assertion, registration.credential_public_key, second.new_sign_count)
    assert stale.credentials[0].counter == 1 and authenticator.credentials[0].counter == 2


def test_forced_counter_regression_refused(registered):
    authenticator, registration = registered
    options, options_json = authentication_options()
    verify_authentication(options, authenticator.get(options_json, counter=5), registration.credential_public_key)
    options, options_json = authentication_options()
    assertion = authenticator.get(options_json, counter=5)  # replays the same count
    with pytest.raises(InvalidAuthenticationResponse, match="sign count"):
        verify_authentication(options, assertion, registration.credential_public_key, 5)
    assert authenticator.credentials[0].counter == 5


# -- credential selection and exclusion --------------------------------------------------------------------


def test_excluded_credential_raises():
    authenticator = SoftAuthenticator()
    registration = register(authenticator)
    _, options_json = registration_options(
        exclude_credentials=[PublicKeyCredentialDescriptor(id=registration.credential_id)]
    )
    with pytest.raises(ExcludedCredential):
        authenticator.create(options_json)
    assert len(authenticator.credentials) == 1


def test_foreign_excluded_credential_does_not_block():
    authenticator = SoftAuthenticator()
    foreign = register(SoftAuthenticator())
    options, options_json = registration_options(
        user_id=b"user-2", exclude_credentials=[PublicKeyCredentialDescriptor(id=foreign.credential_id)]
    )
    verify_registration(options, authenticator.create(options_json))


def test_discoverable_selection_and_user_handle():
    authenticator = SoftAuthenticator()
    alice = register(authenticator, user_id=b"alice-id", user_name="alice")
    bob = register(authenticator, user_id=b"bob-id", user_name="bob")
    assert [c.user_handle for c in authenticator.credentials] == [b"alice-id", b"bob-id"]

    # No allowCredentials: the latest credential for the RP ID.
    options, options_json = authentication_options()
    assert "allowCredentials" not in options_json or options_json["allowCredentials"] == []
    assertion = authenticator.get(options_json)
    assert b64url_decode(assertion["rawId"]) == bob.credential_id
    assert b64url_decode(assertion["response"]["userHandle"]) == b"bob-id"
    verify_authentication(options, assertion, bob.credential_public_key)

    # The user picks another account.
    options, options_json = authentication_options()
    assertion = authenticator.get(options_json, credential_id=alice.credential_id)
    assert b64url_decode(assertion["response"]["userHandle"]) == b"alice-id"
    assert verify_authentication(options, assertion, alice.credential_public_key).new_sign_count == 1


def test_allow_credentials_selects_own_listed_credential():
    authenticator = SoftAuthenticator()
    alice = register(authenticator, user_id=b"alice-id")
    register(authenticator, user_id=b"bob-id")
    foreign = register(SoftAuthenticator(), user_id=b"carol-id")
    options, options_json = authentication_options(
        allow_credentials=[
            PublicKeyCredentialDescriptor(id=foreign.credential_id),
            PublicKeyCredentialDescriptor(id=alice.credential_id),
        ]
    )
    assertion = authenticator.get(options_json)
    assert b64url_decode(assertion["id"]) == alice.credential_id
    assert b64url_decode(assertion["response"]["userHandle"]) == b"alice-id"
    verify_authentication(options, assertion, alice.credential_public_key)


def test_no_credential():
    authenticator = SoftAuthenticator()
    _, options_json = authentication_options()
    with pytest.raises(NoCredential):
        authenticator.get(options_json)  # nothing stored at all

    register(authenticator)
    foreign = register(SoftAuthenticator(), user_id=b"user-2")
    _, options_json = authentication_options(
        allow_credentials=[PublicKeyCredentialDescriptor(id=foreign.credential_id)]
    )
    with pytest.raises(NoCredential):
        authenticator.get(options_json)  # none of the listed credentials is ours

    other_rp = json.loads(options_to_json(generate_authentication_options(rp_id="other.example")))
    with pytest.raises(NoCredential):
        authenticator.get(other_rp)  # credentials are scoped to their RP ID
    assert authenticator.credentials[0].counter == 0


def test_reregistering_same_user_replaces_resident_credential():
    authenticator = SoftAuthenticator()
    first = register(authenticator)
    second = register(authenticator)
    assert [c.id for c in authenticator.credentials] == [second.credential_id]
    assert first.credential_id != second.credential_id


def test_clone_is_independent():
    authenticator = SoftAuthenticator()
    register(authenticator)
    twin = authenticator.clone()
    register(twin, user_id=b"user-2")
    assert len(authenticator.credentials) == 1 and len(twin.credentials) == 2
    _, options_json = authentication_options()
    authenticator.get(options_json, credential_id=authenticator.credentials[0].id)
    assert authenticator.credentials[0].counter == 1 and twin.credentials[0].counter == 0


def test_unsupported_algorithm():
    _, options_json = registration_options(supported_pub_key_algs=[-257])  # RS256 only
    with pytest.raises(NotSupported):
        SoftAuthenticator().create(options_json)
