"""Users' data: the manifest schema, validation with counted skips, and importers."""
