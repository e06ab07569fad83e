"""Microsoft Graph, for any product area."""
