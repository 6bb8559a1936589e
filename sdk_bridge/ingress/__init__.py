"""Ingress: mail for SDK recipients arrives over SMTP and is stored in the spool."""
