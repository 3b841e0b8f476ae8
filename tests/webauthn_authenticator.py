"""A software WebAuthn authenticator, standing in for a browser plus a passkey in the tests.

``SoftAuthenticator`` models what a browser's ``navigator.credentials.create()`` / ``.get()`` do with a
platform authenticator (a passkey provider) behind them, and returns what the page's JavaScript would send
to the server: ``credential.toJSON()``, i.e. ``RegistrationResponseJSON`` / ``AuthenticationResponseJSON``
with every binary field base64url-encoded without padding.

What it models (WebAuthn Level 2/3, CTAP2 for the authenticator's side):

* the client (browser) side: it writes ``clientDataJSON`` (type, challenge, origin, ``crossOrigin: false``)
  and refuses to register an authenticator that already holds one of ``excludeCredentials``
  (``ExcludedCredential``, a browser's ``InvalidStateError``);
* the authenticator side: one EC P-256 key pair per credential (COSE ES256, alg -7), a random credential
  id, discoverable ("resident") credentials scoped to an RP ID and a user handle, a signature counter per
  credential, "none" attestation, and the authenticator data flags UP, UV and AT;
* assertions: ECDSA-SHA256 (DER) over ``authenticatorData || SHA-256(clientDataJSON)``.

It does not model attestation certificates, extensions, backup flags (BE/BS), user interaction, timeouts,
hybrid/cross-device transports, or the RP ID / origin checks a browser makes (a test can forge both on
purpose: see the ``origin`` / ``rp_id`` / ``challenge`` / ``uv`` overrides, which let the tests prove that
the server refuses such responses).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "AuthenticatorError",
    "ExcludedCredential",
    "NoCredential",
    "NotSupported",
    "SoftAuthenticator",
    "StoredCredential",
    "b64url_decode",
    "b64url_encode",
    "cose_public_key",
    "parse_authenticator_data",
]

# COSE identifiers (RFC 9052/9053, IANA COSE registries).
COSE_KTY_EC2 = 2
COSE_ALG_ES256 = -7
COSE_CRV_P256 = 1

# Authenticator data flags (WebAuthn § 6.1).
FLAG_UP = 0x01  # user present
FLAG_UV = 0x04  # user verified
FLAG_AT = 0x40  # attested credential data included
FLAG_ED = 0x80  # extension data included (never set here)


class AuthenticatorError(Exception):
    """Base class: the ceremony fails in the browser, nothing is sent to the server."""


class ExcludedCredential(AuthenticatorError):
    """``create()``: the authenticator already holds a credential listed in ``excludeCredentials``.

    A browser rejects the promise with an ``InvalidStateError`` DOMException in this case.
    """


class NoCredential(AuthenticatorError):
    """``get()``: the authenticator holds no credential usable for the request (``NotAllowedError``)."""


class NotSupported(AuthenticatorError):
    """``create()``: none of ``pubKeyCredParams`` is ES256 (-7), the only algorithm modelled (``NotSupportedError``)."""


def b64url_encode(data: bytes) -> str:
    """base64url without padding, as ``toJSON()`` writes binary fields."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of ``b64url_encode`` (padding optional)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cose_public_key(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The COSE_Key of a P-256 public key, CBOR-encoded: ``{1: 2, 3: -7, -1: 1, -2: x, -3: y}``."""
    numbers = public_key.public_numbers()
    return cbor2.dumps(
        {
            1: COSE_KTY_EC2,
            3: COSE_ALG_ES256,
            -1: COSE_CRV_P256,
            -2: numbers.x.to_bytes(32, "big"),
            -3: numbers.y.to_bytes(32, "big"),
        },
        canonical=True,
    )


def parse_authenticator_data(data: bytes) -> dict[str, Any]:
    """Split authenticator data into its fields (for assertions in tests).

    Returns ``rp_id_hash``, ``flags`` (int), ``up``/``uv``/``at`` (bools), ``sign_count`` and, when AT is set,
    ``aaguid``, ``credential_id`` and ``credential_public_key`` (the CBOR COSE_Key bytes, decoded as
    ``cose_key``).
    """
    rp_id_hash, flags, sign_count = data[:32], data[32], struct.unpack(">I", data[33:37])[0]
    out: dict[str, Any] = {
        "rp_id_hash": rp_id_hash,
        "flags": flags,
        "up": bool(flags & FLAG_UP),
        "uv": bool(flags & FLAG_UV),
        "at": bool(flags & FLAG_AT),
        "sign_count": sign_count,
    }
    if flags & FLAG_AT:
        aaguid = data[37:53]
        (id_len,) = struct.unpack(">H", data[53:55])
        credential_id = data[55 : 55 + id_len]
        key_bytes = data[55 + id_len :]
        out.update(
            aaguid=aaguid,
            credential_id=credential_id,
            credential_public_key=key_bytes,
            cose_key=cbor2.loads(key_bytes),
        )
    return out


@dataclass
class StoredCredential:
    """A discoverable credential held by the authenticator (what a passkey provider stores).

    ``id``: the credential id (random bytes); ``rp_id``: the RP ID it is scoped to; ``user_handle``: the
    ``user.id`` given at registration (returned as ``userHandle`` in assertions); ``counter``: the signature
    counter, 0 at creation and incremented by each assertion; ``private_key``: its P-256 key.
    """

    id: bytes
    rp_id: str
    user_handle: bytes
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    counter: int = 0
    user_name: str = ""
    user_display_name: str = ""

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    @property
    def public_key_cose(self) -> bytes:
        """The CBOR COSE_Key, as a server stores it after registration (py_webauthn's ``credential_public_key``)."""
        return cose_public_key(self.public_key)

    @property
    def id_b64(self) -> str:
        return b64url_encode(self.id)


def _load_options(options: dict[str, Any] | str) -> dict[str, Any]:
    return json.loads(options) if isinstance(options, str) else options


def _challenge_b64(options: dict[str, Any], challenge: bytes | str | None) -> str:
    if challenge is None:
        return options["challenge"]
    if isinstance(challenge, bytes):
        return b64url_encode(challenge)
    return challenge


def _client_data_json(kind: str, challenge_b64: str, origin: str) -> bytes:
    """``CollectedClientData`` serialised as a browser does: compact JSON, members in this order."""
    return json.dumps(
        {"type": kind, "challenge": challenge_b64, "origin": origin, "crossOrigin": False},
        separators=(",", ":"),
    ).encode("utf-8")


class SoftAuthenticator:
    """A browser plus a platform passkey authenticator, in software.

    ``origin`` is the origin the page runs on (written into ``clientDataJSON``); ``aaguid`` the authenticator
    model's AAGUID (16 bytes, zeros by default as with "none" attestation); ``user_verification`` /
    ``user_present`` whether the UV / UP flags are set by default (per-call ``uv=`` overrides UV).

    ``credentials`` lists the stored ``StoredCredential`` objects, oldest first.
    """

    def __init__(
        self,
        *,
        origin: str = "http://localhost",
        aaguid: bytes = bytes(16),
        user_verification: bool = True,
        user_present: bool = True,
    ) -> None:
        if len(aaguid) != 16:
            raise ValueError("aaguid must be 16 bytes")
        self.origin = origin
        self.aaguid = aaguid
        self.user_verification = user_verification
        self.user_present = user_present
        self.credentials: list[StoredCredential] = []

    # -- helpers ---------------------------------------------------------------------------------------

    def _default_rp_id(self, origin: str) -> str:
        """A browser's default RP ID: the origin's effective domain (host without port)."""
        return urlsplit(origin).hostname or ""

    def _flags(self, uv: bool | None, *, attested: bool) -> int:
        flags = 0
        if self.user_present:
            flags |= FLAG_UP
        if self.user_verification if uv is None else uv:
            flags |= FLAG_UV
        if attested:
            flags |= FLAG_AT
        return flags

    def find(self, credential_id: bytes | str) -> StoredCredential | None:
        """The stored credential with this id (bytes or base64url), or ``None``."""
        if isinstance(credential_id, str):
            credential_id = b64url_decode(credential_id)
        return next((c for c in self.credentials if c.id == credential_id), None)

    def remove(self, credential_id: bytes | str) -> None:
        """Delete a credential, as a user deleting a passkey from their device does."""
        found = self.find(credential_id)
        if found is not None:
            self.credentials.remove(found)

    def clone(self) -> SoftAuthenticator:
        """A copy holding the same keys and counters, evolving independently from now on.

        Models a cloned authenticator (or a stale copy of one): using the copy after the original has signed
        makes it report a counter the server has already seen.
        """
        twin = copy.copy(self)
        twin.credentials = [copy.copy(c) for c in self.credentials]  # keys are immutable: shared is fine
        return twin

    # -- registration ----------------------------------------------------------------------------------

    def create(
        self,
        options: dict[str, Any] | str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        uv: bool | None = None,
        challenge: bytes | str | None = None,
    ) -> dict[str, Any]:
        """``navigator.credentials.create({publicKey: options})`` and then ``credential.toJSON()``.

        ``options`` is ``PublicKeyCredentialCreationOptionsJSON`` (a dict or its JSON text). A new resident
        credential is stored for ``(rp.id, user.id)``, replacing one the authenticator already holds for the
        same RP and user handle (as CTAP2 authenticators do). Overrides, to forge responses: ``origin`` (the
        origin in clientDataJSON), ``rp_id`` (only the RP ID hash in authenticatorData: the credential stays
        scoped to the options' RP ID), ``uv`` (the UV flag), ``challenge`` (bytes or base64url).
        """
        options = _load_options(options)
        origin = origin or self.origin
        scope = options.get("rp", {}).get("id") or self._default_rp_id(origin)

        algs = [
            p.get("alg") for p in options.get("pubKeyCredParams", []) if p.get("type", "public-key") == "public-key"
        ]
        if algs and COSE_ALG_ES256 not in algs:
            raise NotSupported(f"no supported algorithm in pubKeyCredParams {algs}")

        for excluded in options.get("excludeCredentials") or []:
            found = self.find(excluded["id"])
            if found is not None and found.rp_id == scope:
                raise ExcludedCredential(f"credential {excluded['id']} is already registered on this authenticator")

        user = options["user"]
        user_handle = b64url_decode(user["id"])
        private_key = ec.generate_private_key(ec.SECP256R1())
        credential = StoredCredential(
            id=os.urandom(int.from_bytes(os.urandom(1), "big") % 17 + 16),  # 16..32 bytes
            rp_id=scope,
            user_handle=user_handle,
            private_key=private_key,
            counter=0,
            user_name=user.get("name", ""),
            user_display_name=user.get("displayName", ""),
        )
        self.credentials = [c for c in self.credentials if not (c.rp_id == scope and c.user_handle == user_handle)]
        self.credentials.append(credential)

        client_data = _client_data_json("webauthn.create", _challenge_b64(options, challenge), origin)
        auth_data = (
            hashlib.sha256((rp_id or scope).encode("utf-8")).digest()
            + bytes([self._flags(uv, attested=True)])
            + struct.pack(">I", credential.counter)
            + self.aaguid
            + struct.pack(">H", len(credential.id))
            + credential.id
            + credential.public_key_cose
        )
        attestation_object = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data}, canonical=True)
        return {
            "id": credential.id_b64,
            "rawId": credential.id_b64,
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url_encode(client_data),
                "attestationObject": b64url_encode(attestation_object),
                "transports": ["internal"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    # -- authentication --------------------------------------------------------------------------------

    def _select(self, options: dict[str, Any], scope: str, credential_id: bytes | str | None) -> StoredCredential:
        """The credential a browser would use: see ``get()``."""
        allowed = options.get("allowCredentials") or []
        if allowed:
            held = (self.find(descriptor["id"]) for descriptor in allowed)
            candidates = [c for c in held if c is not None and c.rp_id == scope]
        else:
            candidates = [c for c in self.credentials if c.rp_id == scope]
        if credential_id is not None:
            wanted = self.find(credential_id)
            candidates = [c for c in candidates if c is wanted]
        if not candidates:
            kind = "none of allowCredentials is" if allowed else "no discoverable credential is"
            raise NoCredential(f"{kind} held by this authenticator for RP ID {scope!r}")
        return candidates[0] if allowed else candidates[-1]

    def get(
        self,
        options: dict[str, Any] | str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        uv: bool | None = None,
        challenge: bytes | str | None = None,
        credential_id: bytes | str | None = None,
        counter: int | None = None,
    ) -> dict[str, Any]:
        """``navigator.credentials.get({publicKey: options})`` and then ``credential.toJSON()``.

        ``options`` is ``PublicKeyCredentialRequestOptionsJSON`` (a dict or its JSON text). With an empty
        ``allowCredentials`` (a discoverable / "usernameless" request) the latest credential stored for
        ``rpId`` is used, or the one given by ``credential_id`` (the account the user picks); otherwise the
        first listed credential this authenticator holds for ``rpId`` (``credential_id`` if given and listed).
        ``NoCredential`` if there is none to use. The credential's counter
        is incremented, or set to ``counter`` (to replay an old value). Overrides as for ``create()``.
        """
        options = _load_options(options)
        origin = origin or self.origin
        scope = options.get("rpId") or self._default_rp_id(origin)
        credential = self._select(options, scope, credential_id)
        credential.counter = credential.counter + 1 if counter is None else counter

        client_data = _client_data_json("webauthn.get", _challenge_b64(options, challenge), origin)
        auth_data = (
            hashlib.sha256((rp_id or scope).encode("utf-8")).digest()
            + bytes([self._flags(uv, attested=False)])
            + struct.pack(">I", credential.counter)
        )
        signature = credential.private_key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        return {
            "id": credential.id_b64,
            "rawId": credential.id_b64,
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url_encode(client_data),
                "authenticatorData": b64url_encode(auth_data),
                "signature": b64url_encode(signature),
                "userHandle": b64url_encode(credential.user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }
