"""MicrosoftTeamsClient's messages against the Microsoft emulator: the shapes it posts
(mentions, Adaptive Cards), sends paced under Teams' limits (in process and shared in
Redis), reading messages and replies, and delta queries."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import pytest

from tests.graph.emulated import (
    ALERTS,
    ALERTS_MESSAGES,
    SECOPS,
    TEST_SAFETY,
    EmulatedTeams,
)
from tracecat.exceptions import BadRequestError, GraphError
from tracecat.graph.pacing import InProcessPacer, RedisPacer
from tracecat.graph.resources import Mention

# -- message shapes --------------------------------------------------------------------------


def stored_message(emulated: EmulatedTeams, index: int = 0) -> dict[str, Any]:
    """The chatMessage as the emulator stored it from what the client posted."""
    return emulated.stored_messages()[index]["chat_message"]


async def test_mentions_are_tagged_in_an_html_body(emulated: EmulatedTeams) -> None:
    message = await emulated.client().send_message(
        SECOPS,
        ALERTS,
        "Alert <high> for",
        subject="Incident",
        mentions=[
            {"id": "aad-1", "display_name": "Alice"},
            Mention(id="aad-2", display_name="Bob"),
        ],
    )
    sent = stored_message(emulated)
    assert sent["subject"] == "Incident"
    assert sent["body"] == {
        "contentType": "html",
        "content": 'Alert &lt;high&gt; for <at id="0">Alice</at> <at id="1">Bob</at>',
    }
    bob = sent["mentions"][1]
    assert (bob["id"], bob["mentionText"]) == (1, "Bob")
    # What the client named; the emulator adds the tenant, as Graph does.
    named = {"id": "aad-2", "displayName": "Bob", "userIdentityType": "aadUser"}
    assert bob["mentioned"]["user"] == {**named, "tenantId": emulated.emulator.tenant_id}
    assert [m.mentioned.user.id for m in message.mentions] == ["aad-1", "aad-2"]


async def test_existing_mention_tags_are_kept(emulated: EmulatedTeams) -> None:
    await emulated.client().send_message(
        SECOPS,
        ALERTS,
        '<p>Hi <at id="0">Ali</at>, please look</p>',
        content_type="html",
        mentions=[{"id": "aad-1", "displayName": "Alice Smith"}],
    )
    sent = stored_message(emulated)
    assert sent["body"]["content"] == '<p>Hi <at id="0">Ali</at>, please look</p>'
    assert sent["mentions"][0]["mentionText"] == "Ali"


async def test_adaptive_card_is_an_attachment_referenced_by_the_body(
    emulated: EmulatedTeams,
) -> None:
    client = emulated.client()
    card = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "x"}]}
    root = await client.send_message(SECOPS, ALERTS, "See card", adaptive_card=card)
    reply = await client.reply_to_message(SECOPS, ALERTS, root.id, "ack")
    sent = stored_message(emulated)
    (attachment,) = sent["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert json.loads(attachment["content"]) == card
    assert sent["body"]["contentType"] == "html"
    assert re.fullmatch(
        rf'See card<attachment id="{attachment["id"]}"></attachment>', sent["body"]["content"]
    )
    assert reply.reply_to_id == root.id
    stored_reply = emulated.stored_messages()[1]
    assert stored_reply["reply_to_id"] == root.id
    assert stored_reply["chat_message"]["body"] == {"contentType": "text", "content": "ack"}


async def test_bad_mention_is_rejected_before_sending(emulated: EmulatedTeams) -> None:
    with pytest.raises(BadRequestError) as caught:
        await emulated.client().send_message(SECOPS, ALERTS, "hi", mentions=[{"id": "aad-1"}])
    assert "display_name" in str(caught.value)
    assert emulated.calls("POST", ALERTS_MESSAGES) == 0


async def test_send_with_mention_and_card_round_trip(emulated: EmulatedTeams) -> None:
    teams = emulated.client()
    team = (await teams.get_user_teams())[0]
    channel = (await teams.list_channels(team.id))[0]
    card = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "!"}]}
    sent = await teams.send_message(
        team.id,
        channel.id,
        "Escalating to",
        mentions=[{"id": "bob-object-id", "display_name": "Bob"}],
        adaptive_card=card,
    )
    assert sent.id and sent.body.content_type == "html"
    graph_message = stored_message(emulated)
    assert graph_message["mentions"][0]["mentioned"]["user"]["userIdentityType"] == "aadUser"
    (attachment,) = graph_message["attachments"]
    assert f'<attachment id="{attachment["id"]}"></attachment>' in graph_message["body"]["content"]
    assert '<at id="0">Bob</at>' in graph_message["body"]["content"]
    listed = await teams.list_channel_messages(team.id, channel.id, top=5)
    assert [m.id for m in listed] == [sent.id]
    assert listed[0].mentions[0].mention_text == "Bob"


# -- pacing, against the emulator's Teams limits -----------------------------------------------


async def test_burst_is_paced_under_teams_limits(emulated: EmulatedTeams) -> None:
    emulated.configure(throttling={"enabled": True})  # 1 message per second per channel
    # One attempt: a 429 would surface instead of being retried. One pool, as the service has:
    # a TLS handshake per send would add its jitter to the gaps. A wider margin than the
    # default 10%: on a loaded 2-core machine a request can spend over 0.1 s in transit, which
    # would move its arrival (the emulator's clock) into the previous second's window; the
    # default margin is measured under load by bench/send_burst.
    teams = emulated.client(
        pacer=InProcessPacer(safety_factor=TEST_SAFETY), retry=emulated.retry(max_attempts=1)
    )
    async with teams:
        await asyncio.gather(*(teams.send_message(SECOPS, ALERTS, f"m{i}") for i in range(3)))
    assert emulated.stats()["throttled"] == 0
    assert sorted(emulated.stored_contents()) == ["m0", "m1", "m2"]


async def test_unpaced_burst_would_be_throttled(emulated: EmulatedTeams) -> None:
    # The emulator really enforces the limit: without pacing the same burst hits 429s.
    emulated.configure(throttling={"enabled": True})
    teams = emulated.client(retry=emulated.retry(max_attempts=1))
    results = await asyncio.gather(
        *(teams.send_message(SECOPS, ALERTS, f"m{i}") for i in range(3)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, GraphError)]
    assert refused and all(r.status_code == 429 for r in refused)
    assert emulated.stats()["throttled"] == len(refused)
    assert len(emulated.stored_messages()) + len(refused) == 3


async def test_redis_pacer_is_shared_by_two_processes(emulated: EmulatedTeams) -> None:
    # One send each: unless their pacers share one budget, both go at once and one is refused.
    emulated.configure(throttling={"enabled": True})
    prefix = f"test:teams:{uuid.uuid4().hex}"
    clients = [
        emulated.client(
            pacer=RedisPacer("redis://127.0.0.1:6379/0", prefix=prefix, safety_factor=TEST_SAFETY),
            retry=emulated.retry(max_attempts=1),
        )
        for _ in range(2)
    ]
    async with clients[0], clients[1]:
        sends = (t.send_message(SECOPS, ALERTS, f"m{i}") for i, t in enumerate(clients))
        await asyncio.gather(*sends)
    assert emulated.stats()["throttled"] == 0
    assert len(emulated.stored_messages()) == 2
    for teams in clients:
        await teams.pacer.aclose()


# -- reading messages, replies and the delta -----------------------------------------------------


async def test_read_a_message_a_reply_and_its_replies(emulated: EmulatedTeams) -> None:
    emulated.configure(page_sizes={"replies": 2})
    client = emulated.client()
    root = await client.send_message(SECOPS, ALERTS, "root")
    replies = [await client.reply_to_message(SECOPS, ALERTS, root.id, f"r{i}") for i in range(3)]
    message = await client.get_message(SECOPS, ALERTS, root.id)
    assert (message.id, message.body.content, message.reply_to_id) == (root.id, "root", None)
    reply = await client.get_reply(SECOPS, ALERTS, root.id, replies[1].id)
    assert (reply.id, reply.body.content, reply.reply_to_id) == (replies[1].id, "r1", root.id)
    replies_path = f"{ALERTS_MESSAGES}/{root.id}/replies"
    listed = await client.list_replies(SECOPS, ALERTS, root.id)
    assert [r.body.content for r in listed] == ["r2", "r1", "r0"]  # newest first, as Graph
    assert emulated.calls("GET", replies_path) == 2  # two to a page
    newest = await client.list_replies(SECOPS, ALERTS, root.id, top=1)
    assert [r.id for r in newest] == [replies[2].id]
    assert emulated.calls("GET", replies_path) == 3
    with pytest.raises(GraphError) as missing:
        await client.get_reply(SECOPS, ALERTS, root.id, "1")
    assert missing.value.status_code == 404


async def test_message_reads_refuse_path_like_ids(emulated: EmulatedTeams) -> None:
    client = emulated.client()
    with pytest.raises(BadRequestError):
        await client.get_message(SECOPS, ALERTS, "..")
    with pytest.raises(BadRequestError):
        await client.get_reply(SECOPS, ALERTS, "1", "a/b")
    with pytest.raises(BadRequestError):
        await client.list_replies(SECOPS, ALERTS, "1", top=0)
    assert emulated.stats()["graph_request_log"] == []


async def test_delta_pages_then_its_link_gives_only_newer_root_messages(
    emulated: EmulatedTeams,
) -> None:
    emulated.configure(page_sizes={"messages": 2})
    client = emulated.client()
    first = [await client.send_message(SECOPS, ALERTS, f"m{i}") for i in range(5)]
    await client.reply_to_message(SECOPS, ALERTS, first[0].id, "a reply")
    delta_path = f"{ALERTS_MESSAGES}/delta"
    messages, link = await client.message_delta(SECOPS, ALERTS)
    assert [m.body.content for m in messages] == ["m0", "m1", "m2", "m3", "m4"]  # oldest first
    assert emulated.calls("GET", delta_path) == 3  # every page followed
    assert link.startswith(emulated.emulator.graph_url) and "$deltatoken=" in link

    unchanged, _ = await client.message_delta(SECOPS, ALERTS, link)
    assert unchanged == []
    await client.reply_to_message(SECOPS, ALERTS, first[1].id, "another reply")
    later = [await client.send_message(SECOPS, ALERTS, f"n{i}") for i in range(3)]
    newer, next_link = await client.message_delta(SECOPS, ALERTS, link)
    assert [m.id for m in newer] == [m.id for m in later]  # no replies, nothing seen before
    assert next_link != link
    assert (await client.message_delta(SECOPS, ALERTS, next_link))[0] == []


async def test_delta_link_outside_graph_is_refused_before_sending(
    emulated: EmulatedTeams,
) -> None:
    client = emulated.client()
    _, link = await client.message_delta(SECOPS, ALERTS)
    foreign = link.replace(emulated.emulator.graph_url, "https://evil.example/v1.0")
    for bad in (foreign, "/teams/x/channels/y/messages/delta?$deltatoken=1"):
        with pytest.raises(BadRequestError):
            await client.message_delta(SECOPS, ALERTS, bad)
    assert emulated.calls("GET", f"{ALERTS_MESSAGES}/delta") == 1


async def test_delta_next_link_to_another_host_is_refused(emulated: EmulatedTeams) -> None:
    delta_path = f"{ALERTS_MESSAGES}/delta"
    emulated.fault(
        kind="foreign_next_link", target=delta_path, next_link_base="https://evil.example"
    )
    with pytest.raises(GraphError) as caught:
        await emulated.client().message_delta(SECOPS, ALERTS)
    assert caught.value.code == "UnexpectedNextLink"
    assert emulated.calls("GET", delta_path) == 1
