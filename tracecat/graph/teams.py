"""Microsoft Teams over Microsoft Graph: teams, channels and channel messages for one user."""

from __future__ import annotations

from typing import Any, Unpack

import httpx

from tracecat.config import Settings, get_settings
from tracecat.exceptions import BadRequestError, GraphError
from tracecat.graph.ids import segment
from tracecat.graph.messages import MessageOptions, build_message
from tracecat.graph.pacing import Pacer, pacer_from_settings
from tracecat.graph.resources import Channel, ChatMessage, GraphUser, Team
from tracecat.graph.responses import origin, parse
from tracecat.graph.transport import GraphClient, RetryPolicy

# Graph's largest page of channel messages.
MAX_MESSAGES_PAGE = 50


def _channel_path(team_id: str, channel_id: str) -> str:
    return f"/teams/{segment(team_id, 'team_id')}/channels/{segment(channel_id, 'channel_id')}"


def _message_path(team_id: str, channel_id: str, message_id: str) -> str:
    return f"{_channel_path(team_id, channel_id)}/messages/{segment(message_id, 'message_id')}"


def _top_params(top: int | None) -> dict[str, str] | None:
    if top is not None and top < 1:
        raise BadRequestError("top must be at least 1")
    return {"$top": str(min(top, MAX_MESSAGES_PAGE))} if top else None


class MicrosoftTeamsClient(GraphClient):
    """Microsoft Graph's Teams API for one user's access token.

    Connections are as in `GraphClient`: a given `http_client` (the app's `GraphPool`), else the
    client's own pool inside `async with`, else one short-lived connection per operation, so
    `await MicrosoftTeamsClient(token).get_user_teams()` needs no closing.

    Sends are paced under Teams' limits by `pacer`. Only clients given the same pacer share a
    budget: the service passes its one pacer to every client. Without one, the client makes
    its own from the settings (in-process, or Redis with REDIS_URL), which paces only this
    client's sends; it is closed after each send, or at the end of `async with`.
    """

    def __init__(
        self,
        access_token: str,
        *,
        graph_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        pacer: Pacer | None = None,
        settings: Settings | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(
            access_token,
            # The seed documents `MicrosoftTeamsClient(token)` with nothing else, so this public
            # entry point alone may read the settings from the environment; the service and
            # every other caller pass theirs.
            settings=settings if settings is not None else get_settings(),
            graph_url=graph_url,
            http_client=http_client,
            retry=retry,
        )
        self._pacer = pacer
        self._owns_pacer = pacer is None
        # Sends of this client waiting on its pacer right now (see `_pace`).
        self._pacing = 0

    @property
    def pacer(self) -> Pacer:
        if self._pacer is None:
            self._pacer = pacer_from_settings(self.settings)
        return self._pacer

    async def aclose(self) -> None:
        await super().aclose()
        if self._owns_pacer and self._pacer is not None:
            await self._pacer.aclose()

    # -- Graph operations ------------------------------------------------------------------------

    async def get_me(self) -> GraphUser:
        return await self._get(GraphUser, "/me")

    async def get_user_teams(self) -> list[Team]:
        return await self._list(Team, "/me/joinedTeams")

    async def list_channels(self, team_id: str) -> list[Channel]:
        return await self._list(Channel, f"/teams/{segment(team_id, 'team_id')}/channels")

    async def list_channel_messages(
        self, team_id: str, channel_id: str, *, top: int | None = None
    ) -> list[ChatMessage]:
        params = _top_params(top)
        path = f"{_channel_path(team_id, channel_id)}/messages"
        return await self._list(ChatMessage, path, params=params, limit=top)

    async def get_message(self, team_id: str, channel_id: str, message_id: str) -> ChatMessage:
        """One root message of a channel (not a reply: see `get_reply`)."""
        return await self._get(ChatMessage, _message_path(team_id, channel_id, message_id))

    async def get_reply(
        self, team_id: str, channel_id: str, message_id: str, reply_id: str
    ) -> ChatMessage:
        """One reply in the thread of root message `message_id`."""
        path = (
            f"{_message_path(team_id, channel_id, message_id)}"
            f"/replies/{segment(reply_id, 'reply_id')}"
        )
        return await self._get(ChatMessage, path)

    async def list_replies(
        self, team_id: str, channel_id: str, message_id: str, *, top: int | None = None
    ) -> list[ChatMessage]:
        """The replies to a root message, newest first as Graph lists them; at most `top`."""
        params = _top_params(top)
        path = f"{_message_path(team_id, channel_id, message_id)}/replies"
        return await self._list(ChatMessage, path, params=params, limit=top)

    async def message_delta(
        self, team_id: str, channel_id: str, delta_link: str | None = None
    ) -> tuple[list[ChatMessage], str]:
        """The channel's root messages changed since `delta_link` (all of them without one),
        following every page, and the `@odata.deltaLink` to pass next time. Replies are not
        in a delta (read them with `list_replies`); a deleted message has `deleted_date_time`.

        `delta_link` is followed as given (it names its channel itself), so it must be the
        one Graph gave for this channel; one outside the Graph URL is refused (BadRequestError)
        before the token is sent anywhere.
        """
        path = f"{_channel_path(team_id, channel_id)}/messages/delta"
        if delta_link is not None and not self._is_graph_link(delta_link):
            raise BadRequestError(
                f"delta_link must be an @odata.deltaLink Microsoft Graph gave, under "
                f"{self.graph_url}"
            )
        items: list[dict[str, Any]] = []
        url = delta_link or path
        async with self._connection() as http:
            for _ in range(self.retry.max_pages):
                page = await self._request(http, "GET", url)
                items.extend(page.get("value") or [])
                next_link = page.get("@odata.nextLink")
                if next_link:
                    url = next_link
                    continue
                new_link = page.get("@odata.deltaLink")
                if not isinstance(new_link, str) or not self._is_graph_link(new_link):
                    raise GraphError(
                        502,
                        "InvalidResponse",
                        f"Microsoft Graph ended the delta of {path} without an @odata.deltaLink "
                        "under the Graph URL",
                    )
                return [parse(ChatMessage, item) for item in items], new_link
        raise GraphError(
            502,
            "TooManyPages",
            f"Microsoft Graph returned more than {self.retry.max_pages} pages for {path}; "
            "narrow the request",
        )

    async def send_message(
        self, team_id: str, channel_id: str, content: str, **options: Unpack[MessageOptions]
    ) -> ChatMessage:
        """Post to a channel; `options` as in `build_message`."""
        path = f"{_channel_path(team_id, channel_id)}/messages"
        body = build_message(content, **options)
        await self._pace(team_id, channel_id)
        return await self._post(ChatMessage, path, body)

    async def reply_to_message(
        self,
        team_id: str,
        channel_id: str,
        message_id: str,
        content: str,
        **options: Unpack[MessageOptions],
    ) -> ChatMessage:
        """Reply in a message's thread; `options` as in `build_message`."""
        path = (
            f"{_channel_path(team_id, channel_id)}"
            f"/messages/{segment(message_id, 'message_id')}/replies"
        )
        body = build_message(content, **options)
        await self._pace(team_id, channel_id)
        return await self._post(ChatMessage, path, body)

    def _is_graph_link(self, link: str) -> bool:
        """An absolute link to the Graph URL's origin (the transport's nextLink rule)."""
        absolute = link.startswith(("https://", "http://"))
        return absolute and origin(link) == origin(self.graph_url)

    async def _pace(self, team_id: str, channel_id: str) -> None:
        """Wait for this send's slot under Teams' limits."""
        pacer = self.pacer
        self._pacing += 1
        try:
            await pacer.acquire(team_id, channel_id)
        finally:
            self._pacing -= 1
            # A pacer of our own may hold connections (Redis): outside `async with` nothing
            # else would close them, so the last send using it does, and the next reopens.
            if self._owns_pacer and not self.in_context and self._pacing == 0:
                await pacer.aclose()
