"""The counters the stages bump where things happen, for /metrics (`ops.metrics`). One
registry per process (not prometheus-client's global one), so tests and the daemon see
only ours."""

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()

SMTP_ACCEPTED = Counter(
    "sdk_bridge_smtp_accepted", "Mails accepted over SMTP (250), durably spooled", registry=REGISTRY
)
OUTBOUND = Counter(
    "sdk_bridge_outbound",
    "SDK messages we sent, by what became of them",
    ["outcome"],  # submitted, delivered, rejected, failed
    registry=REGISTRY,
)
OUTBOUND_REJECTED = Counter(
    "sdk_bridge_outbound_rejected",
    "SDK messages we sent that the receiver's kvittens REJECTED, by reason",
    ["reason"],  # "BV not-found", "SIG security", …
    registry=REGISTRY,
)
INBOUND = Counter(
    "sdk_bridge_inbound",
    "SDK messages received, by verdict and kvittens reason",
    ["outcome", "reason"],  # accepted/rejected/quarantined; "SIG security", "BV duplicate", …
    registry=REGISTRY,
)
INCIDENTS = Counter(
    "sdk_bridge_incidents",
    "Security incidents: malware found in a received message",
    ["kind"],
    registry=REGISTRY,
)
LOST = Counter(
    "sdk_bridge_inbound_lost",
    "Messages the access point no longer gives out after a crash (recover with inbound import)",
    registry=REGISTRY,
)
FOREIGN = Counter(
    "sdk_bridge_inbound_foreign",
    "Messages for other organisations listed by the access point, left there untouched",
    registry=REGISTRY,
)
OVERSIZED = Counter(
    "sdk_bridge_inbound_oversized",
    "Messages at the access point too large to take (answered REJECTED too-long if they can be)",
    registry=REGISTRY,
)
KVITTENS_SENT = Counter(
    "sdk_bridge_kvittens_sent",
    "Kvittens handed to the access point",
    ["outcome"],
    registry=REGISTRY,
)
KVITTENS_FAILED = Counter(
    "sdk_bridge_kvittens_failed",
    "Kvittens the access point could not send to the sender's, given up",
    registry=REGISTRY,
)
MAILBOX = Counter(
    "sdk_bridge_mailbox_deliveries",
    "Attempts to put received mail into a mailbox, by outcome",
    ["outcome"],  # delivered, retry, failed
    registry=REGISTRY,
)
SMTP_CONNECTIONS_REFUSED = Counter(
    "sdk_bridge_smtp_connections_refused",
    "SMTP connections refused with 421 4.7.0: over the per-client or the total limit",
    registry=REGISTRY,
)
SMTP_TLS = Counter(
    "sdk_bridge_smtp_tls_sessions",
    "SMTP sessions that completed a TLS handshake, by kind",
    ["kind"],  # starttls, implicit (the port 465 style listener)
    registry=REGISTRY,
)
SMTP_REGISTRY_DEFERRALS = Counter(
    "sdk_bridge_smtp_registry_deferrals",
    "Recipients deferred (451) because the registry could not answer",
    registry=REGISTRY,
)
# Seconds: from the end of DATA to 250; from 250 to the access point taking it; judging
# one received message; one mailbox delivery.
LATENCY = Histogram(
    "sdk_bridge_latency_seconds",
    "How long each stage takes",
    ["stage"],  # smtp_accept, submit, inbound_judge, mailbox
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)
ACCESS_POINT_ERRORS = Counter(
    "sdk_bridge_access_point_errors",
    "Calls to the access point that failed",
    ["operation"],
    registry=REGISTRY,
)
