"""What every stage runs on: durable files, retry pauses, bounded concurrency, the crypto
worker processes and their memory, systemd's notifications, the logs."""
