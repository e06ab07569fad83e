"""The API's request and response models (to be moved here from models.py).

For now only a re-export of the Graph resources, which moved to `tracecat.graph.resources`,
so that modules still importing them from here keep working until they are updated.
"""

from tracecat.graph.resources import (
    Channel,
    ChannelIdentity,
    ChatMessage,
    ChatMessageAttachment,
    ChatMessageMention,
    GraphModel,
    GraphUser,
    Identity,
    IdentitySet,
    ItemBody,
    Mention,
    Team,
)

__all__ = [
    "Channel",
    "ChannelIdentity",
    "ChatMessage",
    "ChatMessageAttachment",
    "ChatMessageMention",
    "GraphModel",
    "GraphUser",
    "Identity",
    "IdentitySet",
    "ItemBody",
    "Mention",
    "Team",
]
