"""Inbound: what the access point hands over, kept durably first, then dealt with."""
