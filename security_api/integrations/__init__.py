"""Telling people: the notification outbox, webhook and email."""
