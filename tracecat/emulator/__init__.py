"""Offline Microsoft emulator: identity platform v2.0 and Graph v1.0 (Teams) over HTTPS.

Like Azurite for Azure Storage, it speaks Microsoft's documented protocols so the
product can be tried and tested with no tenant and no network. Start it with
`tracecat.emulator.server.EmulatorServer` or `run_emulator`.
"""
