"""A faithful local SDK federation for trying and testing: a test PKI, the address book,
SMP with CertPub, revocation services and one access point per organisation, all on
loopback. Every service is a plain WSGI application served by `web.Server`.
"""
