"""``render``: Quart's ``render_template``, or the faster path of quart_app/speedups.py when it is on."""

from __future__ import annotations

from typing import Any

from quart import current_app, render_template

# Where quart_app/speedups.py puts its renderer.
RENDERER = "quart_app.render"


async def render(template_name: str, **context: Any) -> str:
    fast = current_app.extensions.get(RENDERER)
    if fast is not None:
        return await fast(template_name, context)
    return await render_template(template_name, **context)
