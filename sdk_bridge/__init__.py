"""sdk-bridge: an organisation's e-mail on SDK, Säker digital kommunikation."""

__version__ = "0.1.0"
