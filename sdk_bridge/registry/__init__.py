"""The registry client: address book, SML/SMP, CertPub."""
