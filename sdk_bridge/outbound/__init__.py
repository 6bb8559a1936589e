"""outbound: from the spool to the access point."""
