"""Teams change notifications relayed to the user's own endpoint as signed webhooks.

`models.py` (tables), `targets.py` (which URLs a webhook may go to, and pinning the checked
address), `signing.py` (Standard Webhooks secrets and headers), `outbox.py` (the transactional
outbox: enqueue in the caller's transaction, claim under a lease, record outcomes),
`delivery.py` (sending one delivery, and the worker a `Job` runs), `inbound.py` and
`router.py` (what Microsoft POSTs to us, kept before the 202), `processing.py` (turning a kept
notification into an outbox entry), `errors.py`.
"""
