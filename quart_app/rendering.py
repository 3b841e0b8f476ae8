"""Pages rendered by Jinja in its plain (sync) mode.

Quart compiles templates in Jinja's async mode, where every piece of output
passes through an async generator: for pages like these, whose context is
ready before rendering starts (nothing in a template awaits anything), the
plain mode renders the same text in less time. ``render`` is
``quart.render_template`` with that one difference: the same loader, globals,
filters and context processors (the overlay shares them with
``app.jinja_env``), and Quart's template signals still sent when anything
listens to them.
"""

from __future__ import annotations

import inspect
from typing import Any

from quart import Quart, current_app
from quart.globals import app_ctx
from quart.signals import before_render_template, template_rendered

_EXTENSION = "quart_app.sync_jinja"
# Quart 0.23 passes the app context to update_template_context; 0.22 does not.
_CONTEXT_TAKES_APP_CTX = "ctx" in inspect.signature(Quart.update_template_context).parameters


async def render(template_name: str, **context: Any) -> str:
    app = current_app._get_current_object()
    environment = app.extensions.get(_EXTENSION)
    if environment is None:
        environment = app.extensions[_EXTENSION] = app.jinja_env.overlay(enable_async=False)
    if _CONTEXT_TAKES_APP_CTX:
        await app.update_template_context(app_ctx._get_current_object(), context)
    else:
        await app.update_template_context(context)
    template = environment.get_template(template_name)
    if before_render_template.receivers:
        await before_render_template.send_async(app, _sync_wrapper=app.ensure_async, template=template, context=context)
    page = template.render(context)
    if template_rendered.receivers:
        await template_rendered.send_async(app, _sync_wrapper=app.ensure_async, template=template, context=context)
    return page
