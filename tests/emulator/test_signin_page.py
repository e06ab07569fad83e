"""The sign-in page as a browser uses it: its forms are parsed and submitted the way a browser
submits them (a clicked button sends its own name and value, and only its form's fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import msal
import pytest
from emulator_support import ALICE, ALL_SCOPES, BOB, REDIRECT_URI, query_of

from tracecat.emulator.constants import DEMO_USERS
from tracecat.emulator.server import EmulatorServer
from tracecat.emulator.state import describe_user

pytestmark = pytest.mark.filterwarnings("ignore:response_mode:UserWarning")

FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
EMAIL_LABEL = "Or sign in as any email address"


@dataclass
class Button:
    form: str
    name: str
    value: str
    text: str = ""

    @property
    def accessible_name(self) -> str:
        return " ".join(self.text.split())


@dataclass
class Form:
    action: str
    fields: list[tuple[str, str]] = field(default_factory=list)


class SignInPage(HTMLParser):
    """Forms, fields, buttons (with their form owner, honouring form="...") and labels."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.forms: dict[str, Form] = {}
        self.buttons: list[Button] = []
        self.labels: dict[str, str] = {}  # input id -> label text
        self.field_forms: dict[str, str] = {}  # field name -> form id
        self._form: str | None = None
        self._button: Button | None = None
        self._label: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {key: value or "" for key, value in attrs}
        if tag == "form":
            self._form = attr.get("id") or f"form{len(self.forms)}"
            self.forms[self._form] = Form(attr["action"])
        elif tag == "input" and self._form and attr.get("name"):
            self.forms[self._form].fields.append((attr["name"], attr.get("value", "")))
            self.field_forms[attr["name"]] = self._form
        elif tag == "button" and attr.get("type", "submit") == "submit":
            owner = attr.get("form") or self._form or ""
            self._button = Button(owner, attr.get("name", ""), attr.get("value", ""))
            self.buttons.append(self._button)
        elif tag == "label":
            self._label = attr.get("for", "")
            self.labels[self._label] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "button":
            self._button = None
        elif tag == "label":
            self._label = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.text += data
        if self._label is not None:
            self.labels[self._label] += data

    def button(self, name: str) -> Button:
        return next(b for b in self.buttons if b.accessible_name.startswith(name))

    def click(self, button: Button, typed: dict[str, str] | None = None) -> tuple[str, str]:
        """The (action, urlencoded body) a browser posts when the button is clicked."""
        form = self.forms[button.form]
        typed = typed or {}
        pairs = [(name, typed.get(name, value)) for name, value in form.fields]
        if button.name:
            pairs.append((button.name, button.value))
        return form.action, urlencode(pairs)

    def press_enter(self, field_name: str, typed: dict[str, str]) -> tuple[str, str]:
        """Implicit submission: the first submit button whose form owner is the field's form."""
        owner = self.field_forms[field_name]
        return self.click(next(b for b in self.buttons if b.form == owner), typed)


def open_page(browse: httpx.Client, url: str) -> SignInPage:
    response = browse.get(url)
    assert response.status_code == 200, response.text
    return SignInPage(response.text)


def post(
    emulator: EmulatorServer, browse: httpx.Client, submission: tuple[str, str]
) -> httpx.Response:
    action, body = submission
    return browse.post(f"{emulator.http_url}{action}", content=body, headers=FORM_HEADERS)


def redeemed_user(
    msal_app: msal.ConfidentialClientApplication, flow: dict, response: httpx.Response
) -> str:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(f"{REDIRECT_URI}?code=")
    result = msal_app.acquire_token_by_auth_code_flow(flow, query_of(location))
    assert "access_token" in result, result
    return result["id_token_claims"]["preferred_username"]


def authorize_url(emulator: EmulatorServer, **extra: str) -> str:
    params = {
        "client_id": emulator.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid User.Read",
        "state": "st-42",
        **extra,
    }
    return f"{emulator.http_url}/common/oauth2/v2.0/authorize?{urlencode(params)}"


def test_one_click_on_a_demo_account_signs_in(
    emulator: EmulatorServer, msal_app: msal.ConfidentialClientApplication, browse: httpx.Client
) -> None:
    flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI)
    page = open_page(browse, flow["auth_uri"])
    action, body = page.click(page.button(describe_user(ALICE).display_name))
    # Exactly the authorize parameters as hidden inputs, plus the clicked button's user=<email>.
    assert parse_qs(body) == {
        **{k: [v] for k, v in query_of(flow["auth_uri"]).items()},
        "user": [ALICE],
    }
    assert redeemed_user(msal_app, flow, post(emulator, browse, (action, body))) == ALICE

    # The page before this fix also sent its empty email field along with the button.
    flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI)
    old_page = urlencode({**query_of(flow["auth_uri"]), "email": "", "user": BOB})
    assert redeemed_user(msal_app, flow, post(emulator, browse, (action, old_page))) == BOB


def test_typed_email_signs_in_with_the_button_or_the_enter_key(
    emulator: EmulatorServer, msal_app: msal.ConfidentialClientApplication, browse: httpx.Client
) -> None:
    typed = {"email": " dave@example.com "}
    flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI)
    page = open_page(browse, flow["auth_uri"])
    clicked = post(emulator, browse, page.click(page.button("Sign in"), typed))
    assert redeemed_user(msal_app, flow, clicked) == "dave@example.com"

    # Enter in the email field must press "Sign in", not the first demo account.
    flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI)
    page = open_page(browse, flow["auth_uri"])
    entered = post(emulator, browse, page.press_enter("email", typed))
    assert redeemed_user(msal_app, flow, entered) == "dave@example.com"


@pytest.mark.parametrize("typed", ["not-an-email", ""])
def test_an_invalid_email_redraws_the_page_with_an_error(
    emulator: EmulatorServer, browse: httpx.Client, typed: str
) -> None:
    page = open_page(browse, authorize_url(emulator))
    response = post(emulator, browse, page.click(page.button("Sign in"), {"email": typed}))
    assert response.status_code == 400 and "location" not in response.headers
    assert "Enter a valid email address." in response.text
    assert 'aria-invalid="true" aria-describedby="email-error"' in response.text
    assert SignInPage(response.text).labels["email"] == EMAIL_LABEL

    # A tampered demo account value gets the same answer, not a server error.
    tampered = page.click(page.button(describe_user(BOB).display_name))
    response = post(emulator, browse, (tampered[0], tampered[1].replace("bob%40", "bob")))
    assert response.status_code == 400 and "Enter a valid email address." in response.text


def test_demo_accounts_and_the_email_field_have_accessible_names(
    emulator: EmulatorServer, browse: httpx.Client
) -> None:
    page = open_page(browse, authorize_url(emulator))
    accounts = [b.accessible_name for b in page.buttons if b.name == "user"]
    assert accounts == [f"{describe_user(mail).display_name} {mail}" for mail in DEMO_USERS]
    assert accounts[0] == f"Alice {ALICE}"
    assert page.labels == {"email": EMAIL_LABEL}
    # Cancel belongs to the accounts form: a half-typed email can neither block it nor make it
    # the default button of the email's form.
    assert page.button("Cancel").form != page.field_forms["email"]


def test_cancel_redirects_back_with_access_denied(
    emulator: EmulatorServer, msal_app: msal.ConfidentialClientApplication, browse: httpx.Client
) -> None:
    flow = msal_app.initiate_auth_code_flow(ALL_SCOPES, redirect_uri=REDIRECT_URI)
    page = open_page(browse, flow["auth_uri"])
    declined = post(emulator, browse, page.click(page.button("Cancel"), {"email": "half@"}))
    assert declined.status_code == 302
    params = query_of(declined.headers["location"])
    assert params == {
        "error": "access_denied",
        "error_subcode": "cancel",
        "error_description": "AADSTS65004: User declined to consent to access the app.",
        "state": flow["state"],
    }
    result = msal_app.acquire_token_by_auth_code_flow(flow, params)
    assert result["error"] == "access_denied"


def test_cancel_honours_fragment_and_form_post_response_modes(
    emulator: EmulatorServer, browse: httpx.Client
) -> None:
    page = open_page(browse, authorize_url(emulator, response_mode="fragment"))
    declined = post(emulator, browse, page.click(page.button("Cancel")))
    assert declined.status_code == 302
    location = urlsplit(declined.headers["location"])
    assert location._replace(fragment="").geturl() == REDIRECT_URI
    fragment = {k: v[0] for k, v in parse_qs(location.fragment).items()}
    assert fragment["error"] == "access_denied" and fragment["state"] == "st-42"
    assert fragment["error_description"].startswith("AADSTS65004: ")

    page = open_page(browse, authorize_url(emulator, response_mode="form_post"))
    declined = post(emulator, browse, page.click(page.button("Cancel")))
    assert declined.status_code == 200
    posted = SignInPage(declined.text)
    (form,) = posted.forms.values()
    assert form.action == REDIRECT_URI
    fields = dict(form.fields)
    assert fields["error"] == "access_denied" and fields["state"] == "st-42"
    assert fields["error_description"].startswith("AADSTS65004: ")
