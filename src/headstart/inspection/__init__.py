"""headstart inspect: inventory, duplicates, embeddings, label issues, the report page."""
