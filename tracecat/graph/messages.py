"""chatMessage request bodies: text or html, @mentions and Adaptive Cards, in Graph's shapes."""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

from pydantic import ValidationError

from tracecat.exceptions import BadRequestError
from tracecat.graph.resources import Mention

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"


class MessageOptions(TypedDict, total=False):
    """How a message is shaped, beyond its content (see `build_message`)."""

    content_type: Literal["text", "html"]
    subject: str | None
    mentions: Sequence[Mention | Mapping[str, str]] | None
    adaptive_card: Mapping[str, Any] | None


def build_message(
    content: str,
    *,
    content_type: Literal["text", "html"] = "text",
    subject: str | None = None,
    mentions: Sequence[Mention | Mapping[str, str]] | None = None,
    adaptive_card: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A chatMessage request body, with mentions and a card in the shapes Graph documents."""
    if content_type not in ("text", "html"):
        raise BadRequestError("content_type must be 'text' or 'html'")
    try:
        people = [
            m if isinstance(m, Mention) else Mention.model_validate(m) for m in mentions or []
        ]
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise BadRequestError(
            f"each mention needs an 'id' (Entra user id) and a 'display_name': {reason}"
        ) from None
    if not people and adaptive_card is None:
        message: dict[str, Any] = {"body": {"contentType": content_type, "content": content}}
    else:
        # Mentions and cards are referenced by tags, which only an html body can hold.
        if content_type == "text":
            content = _text_to_html(content)
        graph_mentions = []
        for index, person in enumerate(people):
            tag = re.search(rf'<at id="{index}">(.*?)</at>', content, re.DOTALL)
            if tag is None:
                content = f'{content} <at id="{index}">{html.escape(person.display_name)}</at>'
            graph_mentions.append(
                {
                    "id": index,
                    "mentionText": html.unescape(tag.group(1)) if tag else person.display_name,
                    "mentioned": {
                        "user": {
                            "id": person.id,
                            "displayName": person.display_name,
                            "userIdentityType": "aadUser",
                        }
                    },
                }
            )
        message = {"body": {"contentType": "html", "content": content.strip()}}
        if graph_mentions:
            message["mentions"] = graph_mentions
        if adaptive_card is not None:
            if not isinstance(adaptive_card, Mapping):
                raise BadRequestError("adaptive_card must be the card's JSON object")
            attachment_id = uuid.uuid4().hex
            message["body"]["content"] += f'<attachment id="{attachment_id}"></attachment>'
            message["attachments"] = [
                {
                    "id": attachment_id,
                    "contentType": ADAPTIVE_CARD,
                    "content": json.dumps(adaptive_card),
                }
            ]
    if subject is not None:
        message["subject"] = subject
    return message


def _text_to_html(text: str) -> str:
    """Escape plain text for an html body, keeping any <at id="n">…</at> tags the caller wrote."""
    escaped = html.escape(text, quote=False).replace("\n", "<br>")
    return re.sub(r'&lt;at id="(\d+)"&gt;(.*?)&lt;/at&gt;', r'<at id="\1">\2</at>', escaped)
