"""Requests: catalog, create, my requests, one request with its timeline, approvals."""
