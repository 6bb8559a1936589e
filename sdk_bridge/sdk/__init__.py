"""The SDK message core: build, seal, open and validate SDK messages and kvittens.

Everything here is synchronous and free of I/O beyond what the caller hands in, so the
RSA-heavy parts (`seal`, `open_envelope`) can run in a thread or another process.
"""
