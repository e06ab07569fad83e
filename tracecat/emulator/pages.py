"""The few HTML pages a browser sees: the sign-in page, sign-in errors, and form_post."""

from __future__ import annotations

import html
from functools import cache
from importlib import resources
from string import Template

from fastapi.responses import HTMLResponse

from tracecat.emulator.errors import AadError


@cache
def _template(name: str) -> Template:
    return Template(resources.files("tracecat.emulator").joinpath(name).read_text("utf-8"))


def _hidden_inputs(fields: dict[str, str]) -> str:
    return "\n    ".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )


def signin_page(
    *,
    action: str,
    params: dict[str, str],
    app_name: str,
    tenant_domain: str,
    scopes: str,
    demo_users: list[tuple[str, str]],
    email: str = "",
    error: str = "",
) -> HTMLResponse:
    # The space between the two spans keeps them apart in the button's accessible name
    # ("Alice alice@..."); without it screen readers announce "Alicealice@...".
    users = "\n      ".join(
        f'<button type="submit" name="user" value="{html.escape(mail)}">'
        f'<span class="name">{html.escape(name)}</span> <small>{html.escape(mail)}</small>'
        "</button>"
        for name, mail in demo_users
    )
    page = _template("signin.html").substitute(
        action=html.escape(action),
        hidden=_hidden_inputs(params),
        app_name=html.escape(app_name),
        tenant_domain=html.escape(tenant_domain),
        scopes=html.escape(scopes),
        users=users,
        email=html.escape(email),
        error=html.escape(error),
        invalid=' aria-invalid="true" aria-describedby="email-error"' if error else "",
    )
    return HTMLResponse(page, status_code=400 if error else 200)


def error_page(err: AadError, trace_id: str, correlation_id: str) -> HTMLResponse:
    page = _template("error.html").substitute(
        description=html.escape(err.short_description),
        error=html.escape(err.error),
        trace_id=html.escape(trace_id),
        correlation_id=html.escape(correlation_id),
    )
    return HTMLResponse(page, status_code=err.status)


def form_post_page(redirect_uri: str, fields: dict[str, str]) -> HTMLResponse:
    """response_mode=form_post: the browser POSTs the result to the redirect URI itself."""
    page = (
        "<!doctype html><html><head><title>Working...</title></head>"
        '<body onload="document.forms[0].submit()">'
        f'<form method="POST" name="hiddenform" action="{html.escape(redirect_uri)}">'
        f"{_hidden_inputs(fields)}"
        "<noscript><p>Script is disabled. Click Submit to continue.</p>"
        '<input type="submit" value="Submit"></noscript></form></body></html>'
    )
    return HTMLResponse(page)
