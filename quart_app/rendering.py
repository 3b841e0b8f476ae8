"""Pages rendered by Jinja in its plain (sync) mode.

Quart compiles templates in Jinja's async mode, where every piece of output
passes through an async generator: for pages like these, whose context is
ready before rendering starts (nothing in a template awaits anything), the
plain mode renders the same text in less time. ``render`` is
``quart.render_template`` with that one difference: the same loader, globals,
filters and context processors (the overlay shares them with
``app.jinja_env``), and Quart's template signals still sent when anything
listens to them.

Pages call ``url_for`` for the same few links every time: within ``render``
it remembers what it built, per script root and host, for plain calls (no
``_external``, ``_anchor``, ``_method`` or ``_scheme``, no blueprint-relative
name, no URL defaults registered), and is Quart's own otherwise.
"""

from __future__ import annotations

import inspect
from typing import Any

from quart import Quart, current_app, has_request_context, request
from quart.globals import app_ctx
from quart.signals import before_render_template, template_rendered

_EXTENSION = "quart_app.sync_jinja"
# Quart 0.23 passes the app context to update_template_context; 0.22 does not.
_CONTEXT_TAKES_APP_CTX = "ctx" in inspect.signature(Quart.update_template_context).parameters
# Links remembered per app (a few dozen in practice; the bound is for safety).
_LINKS_KEPT = 512


class _Pages:
    """The plain-mode environment of one app, and the links its pages built."""

    def __init__(self, app: Quart) -> None:
        self.app = app
        # Its own template cache: the overlay would otherwise start from a
        # copy of the async environment's, whose templates are compiled for
        # async mode.
        self.environment = app.jinja_env.overlay(enable_async=False, cache_size=400)
        self._links: dict[tuple, str] = {}

    def url_for(self, root: tuple[str, str]):
        """``url_for`` for the pages of a request with this script root and host."""
        app, links = self.app, self._links

        def url_for(endpoint: str, **values: Any) -> str:
            if endpoint.startswith(".") or any(name.startswith("_") for name in values):
                return app.url_for(endpoint, **values)
            key = (root, endpoint, tuple(sorted(values.items())))
            try:
                link = links.get(key)
            except TypeError:  # a value that cannot be a key (a list, ...)
                return app.url_for(endpoint, **values)
            if link is None:
                link = app.url_for(endpoint, **values)
                if len(links) >= _LINKS_KEPT:
                    links.clear()
                links[key] = link
            return link

        return url_for


async def render(template_name: str, **context: Any) -> str:
    app = current_app._get_current_object()
    pages = app.extensions.get(_EXTENSION)
    if pages is None:
        pages = app.extensions[_EXTENSION] = _Pages(app)
    if _CONTEXT_TAKES_APP_CTX:
        await app.update_template_context(app_ctx._get_current_object(), context)
    else:
        await app.update_template_context(context)
    if has_request_context() and not any(app.url_default_functions.values()):
        context.setdefault("url_for", pages.url_for((request.root_path, request.host)))
    template = pages.environment.get_template(template_name)
    if before_render_template.receivers:
        await before_render_template.send_async(app, _sync_wrapper=app.ensure_async, template=template, context=context)
    page = template.render(context)
    if template_rendered.receivers:
        await template_rendered.send_async(app, _sync_wrapper=app.ensure_async, template=template, context=context)
    return page
