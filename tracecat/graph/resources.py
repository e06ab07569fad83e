"""Microsoft Graph resources as pydantic models, under Graph's own (camelCase) field names.

Unknown fields are kept, so whatever Graph sends can be passed on to our API's callers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class GraphModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="allow",
    )


class GraphUser(GraphModel):
    id: str
    display_name: str | None = None
    mail: str | None = None
    user_principal_name: str | None = None
    given_name: str | None = None
    surname: str | None = None
    job_title: str | None = None


class Team(GraphModel):
    id: str
    display_name: str | None = None
    description: str | None = None
    web_url: str | None = None
    visibility: str | None = None
    is_archived: bool | None = None
    tenant_id: str | None = None


class Channel(GraphModel):
    id: str
    display_name: str | None = None
    description: str | None = None
    membership_type: str | None = None
    web_url: str | None = None
    email: str | None = None
    tenant_id: str | None = None
    created_date_time: datetime | None = None


class ItemBody(GraphModel):
    content_type: str = "text"
    content: str | None = None


class Identity(GraphModel):
    id: str | None = None
    display_name: str | None = None
    user_identity_type: str | None = None


class IdentitySet(GraphModel):
    user: Identity | None = None
    application: Identity | None = None
    device: Identity | None = None


class ChannelIdentity(GraphModel):
    team_id: str | None = None
    channel_id: str | None = None


class ChatMessageMention(GraphModel):
    id: int
    mention_text: str | None = None
    mentioned: IdentitySet | None = None


class ChatMessageAttachment(GraphModel):
    id: str | None = None
    content_type: str | None = None
    content_url: str | None = None
    # Cards carry their JSON serialized as a string, as Graph sends it.
    content: str | None = None
    name: str | None = None
    thumbnail_url: str | None = None
    teams_app_id: str | None = None


class ChatMessage(GraphModel):
    id: str
    reply_to_id: str | None = None
    etag: str | None = None
    message_type: str | None = None
    created_date_time: datetime | None = None
    last_modified_date_time: datetime | None = None
    last_edited_date_time: datetime | None = None
    deleted_date_time: datetime | None = None
    subject: str | None = None
    summary: str | None = None
    importance: str | None = None
    locale: str | None = None
    web_url: str | None = None
    channel_identity: ChannelIdentity | None = None
    from_: IdentitySet | None = Field(default=None, alias="from")
    body: ItemBody = Field(default_factory=ItemBody)
    attachments: list[ChatMessageAttachment] = Field(default_factory=list)
    mentions: list[ChatMessageMention] = Field(default_factory=list)
    reactions: list[dict[str, Any]] = Field(default_factory=list)


class Mention(BaseModel):
    """Who to @mention in a message we send: an Entra ID (AAD) user id and the shown name."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    display_name: str = Field(
        min_length=1, validation_alias=AliasChoices("display_name", "displayName")
    )


class Subscription(GraphModel):
    """A change-notification subscription (Graph's `subscription` resource)."""

    id: str
    resource: str
    change_type: str
    notification_url: str
    expiration_date_time: datetime
    lifecycle_notification_url: str | None = None
    client_state: str | None = None
    application_id: str | None = None
    creator_id: str | None = None
    include_resource_data: bool | None = None
    latest_supported_tls_version: str | None = None
    notification_url_app_id: str | None = None
    notification_query_options: str | None = None
    encryption_certificate: str | None = None
    encryption_certificate_id: str | None = None
