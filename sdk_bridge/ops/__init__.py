"""Operations: what an administrator looks at and steers: the admin port's health and
metrics, configuration checks, the queue commands."""
