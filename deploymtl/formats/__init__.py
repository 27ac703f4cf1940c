"""Every artifact format deploymtl writes and its reader/writer, nothing else (see docs/architecture.md)."""
