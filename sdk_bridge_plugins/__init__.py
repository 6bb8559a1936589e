"""First-party plugins: AP connectors, mailbox delivery, content scanners, spool back ends.

Each is loaded through the same entry points a third party would use.
"""
