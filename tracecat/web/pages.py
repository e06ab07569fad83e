"""Server-rendered pages for a person's browser: Jinja2 templates, assets under /static.

Templates autoescape, so whatever Microsoft or a URL put into a page is shown, never run.
Scripts and styles are files, never inline, so the Content-Security-Policy (see
`tracecat.middleware`) can forbid inline script outright.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from tracecat.exceptions import START_AGAIN, ProviderUnavailableError, SignInError, TracecatError


def wants_html(request: Request) -> bool:
    """A browser navigating asks for text/html by name; API clients send application/json,
    `*/*` or nothing, and keep the JSON answer."""
    return "text/html" in request.headers.get("accept", "")


def static_files() -> StaticFiles:
    return StaticFiles(packages=[("tracecat.web", "static")])


class Pages:
    """The templates, loaded once per app."""

    def __init__(self) -> None:
        self._env = Environment(
            loader=PackageLoader("tracecat.web", "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._index = self._env.get_template("index.html").render()

    def index(self) -> HTMLResponse:
        return HTMLResponse(self._index)

    def render(self, template: str, http_status: int = 200, **context: object) -> HTMLResponse:
        """A page of the web UI; it shows account data, so no cache keeps it."""
        page = self._env.get_template(template).render(**context)
        return HTMLResponse(page, status_code=http_status, headers={"Cache-Control": "no-store"})

    def message(self, heading: str, *paragraphs: str, status: int = 200) -> HTMLResponse:
        page = self._env.get_template("message.html").render(heading=heading, paragraphs=paragraphs)
        return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})

    def connected(self, account: str) -> HTMLResponse:
        return self.message(
            "Microsoft Teams connected",
            f"Signed in as {account}.",
            "You can close this window, or go back to the connect page.",
        )

    def connect_failed(self, error: TracecatError) -> HTMLResponse:
        """A failed callback, said for a person: what happened, then what to do."""
        if isinstance(error, SignInError):
            what, advice = error.what, error.advice
        else:
            what = str(error.detail)
            advice = (
                "Wait a moment, then go back to the connect page and press Connect again."
                if isinstance(error, ProviderUnavailableError)
                else START_AGAIN
            )
        page = self.message(
            "Microsoft Teams was not connected", what, advice, status=error.status_code
        )
        if error.headers:
            page.headers.update(error.headers)
        return page
