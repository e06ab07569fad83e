"""Validating a posted chatMessage and building the resource Graph answers with.

The checks are the ones Graph makes on channel messages: a non-empty body, every
mention matched by an `<at id="N">` tag in an html body (and back), every
attachment referenced by an `<attachment id="...">` tag (and back).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tracecat.emulator.errors import graph_bad_request
from tracecat.emulator.identity_store import DirectoryUser
from tracecat.emulator.teams_store import StoredMessage

if TYPE_CHECKING:
    from tracecat.emulator.state import EmulatorState

AT_TAG = re.compile(r"""<at\s+id\s*=\s*["']?(\d+)["']?\s*>(.*?)</at>""", re.IGNORECASE | re.DOTALL)
ATTACHMENT_TAG = re.compile(
    r"""<attachment\s+id\s*=\s*["']([^"']+)["']\s*>\s*</attachment>""", re.IGNORECASE
)
CARD_TYPES = (
    "application/vnd.microsoft.card.adaptive",
    "application/vnd.microsoft.card.hero",
    "application/vnd.microsoft.card.thumbnail",
    "application/vnd.microsoft.card.o365connector",
)
IDENTITY_KINDS = ("user", "application", "conversation", "tag")
IMPORTANCE = ("normal", "high", "urgent")


def _iso(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _body(payload: dict[str, Any]) -> dict[str, str]:
    body = payload.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("content"), str):
        raise graph_bad_request("Missing body content.")
    content_type = body.get("contentType", "text")
    if not isinstance(content_type, str) or content_type.lower() not in ("text", "html"):
        raise graph_bad_request(f"Invalid value '{content_type}' for body.contentType.")
    if not body["content"].strip():
        raise graph_bad_request("Message body cannot be empty.")
    return {"contentType": content_type.lower(), "content": body["content"]}


def _mentions(
    payload: dict[str, Any], body: dict[str, str], tenant_id: str
) -> list[dict[str, Any]]:
    mentions = payload.get("mentions") or []
    if not isinstance(mentions, list):
        raise graph_bad_request("mentions must be a collection.")
    tags = {int(tag_id) for tag_id, _ in AT_TAG.findall(body["content"])}
    if mentions and body["contentType"] != "html":
        raise graph_bad_request("Mentions are only supported when body.contentType is html.")
    result = []
    for mention in mentions:
        if not isinstance(mention, dict) or not isinstance(mention.get("id"), int):
            raise graph_bad_request("Every mention needs an integer id.")
        if not isinstance(mention.get("mentionText"), str) or not mention["mentionText"]:
            raise graph_bad_request(f"Mention {mention['id']} needs a mentionText.")
        mentioned = mention.get("mentioned")
        kinds = [k for k in IDENTITY_KINDS if isinstance(mentioned, dict) and mentioned.get(k)]
        if len(kinds) != 1 or not isinstance(mentioned, dict):
            raise graph_bad_request(f"Mention {mention['id']} must mention one identity.")
        identity = mentioned[kinds[0]]
        if kinds[0] == "user" and not (isinstance(identity, dict) and identity.get("id")):
            raise graph_bad_request(f"Mention {mention['id']} must give the mentioned user's id.")
        if mention["id"] not in tags:
            raise graph_bad_request(
                f'Mention with id {mention["id"]} has no matching <at id="{mention["id"]}"> tag '
                "in the message body."
            )
        full: dict[str, Any] = {
            k: None for k in ("application", "device", "conversation", "tag", "user")
        }
        full[kinds[0]] = {**identity, "tenantId": identity.get("tenantId", tenant_id)}
        result.append(
            {"id": mention["id"], "mentionText": mention["mentionText"], "mentioned": full}
        )
    missing = tags - {m["id"] for m in result}
    if missing:
        raise graph_bad_request(
            f'The message body has <at id="{min(missing)}"> but no mention with that id.'
        )
    return result


def _attachments(payload: dict[str, Any], body: dict[str, str]) -> list[dict[str, Any]]:
    attachments = payload.get("attachments") or []
    if not isinstance(attachments, list):
        raise graph_bad_request("attachments must be a collection.")
    tags = set(ATTACHMENT_TAG.findall(body["content"]))
    result = []
    for attachment in attachments:
        if not isinstance(attachment, dict) or not isinstance(attachment.get("id"), str):
            raise graph_bad_request("Every attachment needs a string id.")
        attachment_id, content_type = attachment["id"], attachment.get("contentType")
        if attachment_id not in tags:
            raise graph_bad_request(
                f"Attachment with id '{attachment_id}' is not referenced by an "
                f'<attachment id="{attachment_id}"></attachment> tag in the message body.'
            )
        if content_type in CARD_TYPES:
            content = attachment.get("content")
            try:
                card = json.loads(content) if isinstance(content, str) else None
            except ValueError:
                card = None
            if not isinstance(card, dict):
                raise graph_bad_request(
                    f"Attachment '{attachment_id}' content must be a JSON object serialized as "
                    "a string."
                )
        elif content_type == "reference":
            if not isinstance(attachment.get("contentUrl"), str):
                raise graph_bad_request(f"Attachment '{attachment_id}' needs a contentUrl.")
        else:
            raise graph_bad_request(f"Attachment content type '{content_type}' is not supported.")
        result.append(
            {
                "id": attachment_id,
                "contentType": content_type,
                "contentUrl": attachment.get("contentUrl"),
                "content": attachment.get("content"),
                "name": attachment.get("name"),
                "thumbnailUrl": attachment.get("thumbnailUrl"),
                "teamsAppId": attachment.get("teamsAppId"),
            }
        )
    unmatched = tags - {a["id"] for a in result}
    if unmatched:
        raise graph_bad_request(
            f"The message body references attachment '{sorted(unmatched)[0]}' which is not in "
            "the attachments collection."
        )
    return result


def build_chat_message(
    payload: Any,
    *,
    message_id: str,
    team_id: str,
    channel_id: str,
    reply_to_id: str | None,
    sender: DirectoryUser,
    tenant_id: str,
    now: float,
) -> dict[str, Any]:
    """Raise GraphApiError(400) for an invalid payload; return the chatMessage resource.

    `now` is the emulator's clock (state.now()), the message's creation time."""
    if not isinstance(payload, dict):
        raise graph_bad_request(
            "Unable to read JSON request payload. Please ensure Content-Type header is set and "
            "payload is of valid JSON format."
        )
    body = _body(payload)
    mentions = _mentions(payload, body, tenant_id)
    attachments = _attachments(payload, body)
    importance = payload.get("importance", "normal")
    if importance not in IMPORTANCE:
        raise graph_bad_request(f"Invalid value '{importance}' for importance.")
    subject = payload.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise graph_bad_request("subject must be a string.")
    created = _iso(now)
    root_id = reply_to_id or message_id
    web_url = (
        f"https://teams.microsoft.com/l/message/{quote(channel_id, safe='')}/{message_id}"
        f"?groupId={team_id}&tenantId={tenant_id}&createdTime={message_id}"
        f"&parentMessageId={root_id}"
    )
    return {
        "id": message_id,
        "replyToId": reply_to_id,
        "etag": message_id,
        "messageType": "message",
        "createdDateTime": created,
        "lastModifiedDateTime": created,
        "lastEditedDateTime": None,
        "deletedDateTime": None,
        "subject": subject if reply_to_id is None else None,
        "summary": None,
        "chatId": None,
        "importance": importance,
        "locale": "en-us",
        "webUrl": web_url,
        "policyViolation": None,
        "eventDetail": None,
        "from": {
            "application": None,
            "device": None,
            "user": {
                "@odata.type": "#microsoft.graph.teamworkUserIdentity",
                "id": sender.oid,
                "displayName": sender.display_name,
                "userIdentityType": "aadUser",
                "tenantId": tenant_id,
            },
        },
        "body": body,
        "channelIdentity": {"teamId": team_id, "channelId": channel_id},
        "attachments": attachments,
        "mentions": mentions,
        "reactions": [],
        "messageHistory": [],
    }


def post_chat_message(
    state: EmulatorState,
    payload: Any,
    *,
    team_id: str,
    channel_id: str,
    reply_to_id: str | None,
    sender: DirectoryUser,
) -> StoredMessage:
    """Validate, store and announce a new message: what Graph's POST and the control API share."""
    message_id = state.teams.next_message_id()
    resource = build_chat_message(
        payload,
        message_id=message_id,
        team_id=team_id,
        channel_id=channel_id,
        reply_to_id=reply_to_id,
        sender=sender,
        tenant_id=state.tenant_id,
        now=state.now(),
    )
    message = StoredMessage(
        id=message_id,
        team_id=team_id,
        channel_id=channel_id,
        reply_to_id=reply_to_id,
        sender_email=sender.email,
        resource=resource,
    )
    state.store_message(message)
    return message
