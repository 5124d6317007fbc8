"""Query functions. Each takes a Session or Connection; the caller owns the transaction."""
