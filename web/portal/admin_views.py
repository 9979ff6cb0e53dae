"""Administration pages: users, audit log, policy explain."""
