"""What a passkey ceremony costs the event loop: py_webauthn's verification of one answer, in-process.

    .venv/bin/python bench/passkey_verify.py
    .venv/bin/python bench/passkey_verify.py --repeat 15 --number 200

The app verifies a registration (attestation "none") and a sign-in assertion
(one ES256 signature) on the event loop, as quart_app/auth/passkeys.py does:
this times ``verify_registration_response`` and
``verify_authentication_response`` on answers made by the test suite's
software authenticator (tests/webauthn_authenticator.py), the median of
``--repeat`` runs of ``--number`` calls, per call, beside one argon2id
verification at the app's parameters (which runs on the hash pool) for scale.

Prints a table, then one line ``PASSKEY_VERIFY_JSON {...}`` with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from argon2 import PasswordHasher  # noqa: E402
from webauthn import (  # noqa: E402
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import options_to_json_dict  # noqa: E402
from webauthn.helpers.structs import (  # noqa: E402
    AuthenticatorSelectionCriteria,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)
from webauthn_authenticator import SoftAuthenticator  # noqa: E402

from quart_app.core.config import Settings  # noqa: E402

ORIGIN, RP_ID = "http://localhost", "localhost"


def per_call(func, repeat: int, number: int) -> float:
    """Median seconds per call."""
    return statistics.median(timeit.repeat(func, repeat=repeat, number=number)) / number


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--number", type=int, default=100)
    args = parser.parse_args(argv)

    authenticator = SoftAuthenticator(origin=ORIGIN)
    creation = generate_registration_options(
        rp_id=RP_ID,
        rp_name="Quart App",
        user_name="alice",
        user_id=b"\x01" * 32,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED, user_verification=UserVerificationRequirement.REQUIRED
        ),
    )
    answer = authenticator.create(options_to_json_dict(creation))

    def register():
        return verify_registration_response(
            credential=answer,
            expected_challenge=creation.challenge,
            expected_rp_id=RP_ID,
            expected_origin=ORIGIN,
            require_user_verification=True,
        )

    registered = register()
    request = generate_authentication_options(rp_id=RP_ID, user_verification=UserVerificationRequirement.REQUIRED)
    assertion = authenticator.get(options_to_json_dict(request))

    def sign_in():
        return verify_authentication_response(
            credential=assertion,
            expected_challenge=request.challenge,
            expected_rp_id=RP_ID,
            expected_origin=ORIGIN,
            credential_public_key=registered.credential_public_key,
            credential_current_sign_count=0,
            require_user_verification=True,
        )

    sign_in()
    defaults = Settings()
    hasher = PasswordHasher(
        time_cost=defaults.ARGON2_TIME_COST,
        memory_cost=defaults.ARGON2_MEMORY_COST,
        parallelism=defaults.ARGON2_PARALLELISM,
    )
    stored = hasher.hash("correct horse battery")
    figures = {
        "python": platform.python_version(),
        "verify_registration_us": per_call(register, args.repeat, args.number) * 1e6,
        "verify_authentication_us": per_call(sign_in, args.repeat, args.number) * 1e6,
        "argon2id_verify_us": per_call(lambda: hasher.verify(stored, "correct horse battery"), 5, 3) * 1e6,
    }
    print(f"{'check':<44} {'median per call':>16}")
    print(f"{'passkey registration (attestation none)':<44} {figures['verify_registration_us']:>13.0f} µs")
    print(f"{'passkey sign-in (one ES256 signature)':<44} {figures['verify_authentication_us']:>13.0f} µs")
    print(f"{'argon2id verify (m=19 MiB, t=2; hash pool)':<44} {figures['argon2id_verify_us']:>13.0f} µs")
    print("PASSKEY_VERIFY_JSON " + json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
