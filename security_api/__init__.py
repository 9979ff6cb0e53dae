"""Domain of the Security API: knows SQLAlchemy, never Flask."""
