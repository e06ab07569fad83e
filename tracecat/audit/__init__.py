"""The audit log: security events of each user, kept `TRACECAT_AUDIT_RETENTION_DAYS`.

`models.py` (the `audit_events` table and the event names), `service.py` (`AuditLog`:
record, list with a keyset cursor, prune), `router.py` and `schemas.py` (`GET
/auth/integrations/audit`); the client address comes from `tracecat/clients.py`.
"""
