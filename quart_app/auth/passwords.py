"""Password screening (NIST SP 800-63B 5.1.1.2): refuse common and breached passwords, and ones built on the name.

(Being written: the list check and the optional range check come here.)
"""

from __future__ import annotations


async def check_new_password(password: str, *, username: str, email: str, field: str) -> None:
    """Raise ValidationError (400, on ``field``) when ``password`` may not be chosen by this user."""
    return None
