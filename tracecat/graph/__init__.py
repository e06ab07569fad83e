"""Microsoft Graph, for any product area.

`transport` (the request path, retries, paging, `GraphPool`, the `GraphClient` base class),
`pacing` (send budgets), `resources` (typed Graph models), `ids` (ids as path segments), and one
client module per product area: `teams` (`MicrosoftTeamsClient`, with `messages` building its
chatMessages) and `subscriptions` (`GraphSubscriptionsClient`, change notifications).
"""
