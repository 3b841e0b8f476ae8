"""Browser pages (HTML)."""
