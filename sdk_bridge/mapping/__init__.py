"""E-mail and SDK messages, each made from the other: `to_sdk` (a mail becomes business
messages; `htmltext`, `rawparts` and `signed` are its helpers) for ingress and the outbound
worker, `to_mail` (a business message becomes a mail) for the inbound stage."""
