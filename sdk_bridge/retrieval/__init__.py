"""The access point's side of what comes in: `intake` takes envelopes from the access point
into the spool, `opening` verifies and opens them against CertPub; the inbound stage
judges messages, the outbound side's receipts take kvittens."""
