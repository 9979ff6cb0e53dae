"""HTTP layer: thin blueprints over the domain in security_api."""
