"""People and their sign-in: users, passwords, TOTP, sessions, tokens, throttling."""
