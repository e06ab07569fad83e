"""The compose form of a channel page, read into the API's own send request."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from tracecat.auth.integrations.schemas import SendMessageRequest


def message_request(form: dict[str, str]) -> SendMessageRequest:
    """The API's own request model, from the form's fields; ValueError says what is wrong."""
    body: dict[str, Any] = {
        "content": form["content"].strip(),
        "content_type": form["content_type"],
    }
    if form["subject"].strip():
        body["subject"] = form["subject"].strip()
    if form["mention_id"].strip():
        name = form["mention_name"].strip() or form["mention_id"].strip()
        body["mentions"] = [{"id": form["mention_id"].strip(), "display_name": name}]
    if form["adaptive_card"].strip():
        try:
            body["adaptive_card"] = json.loads(form["adaptive_card"])
        except ValueError as exc:
            raise ValueError(f"The Adaptive Card is not valid JSON: {exc}.") from None
    try:
        return SendMessageRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        field = {"content": "Message", "content_type": "Format"}.get(where, where)
        raise ValueError(f"{field}: {first['msg']}.") from None
