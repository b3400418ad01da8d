"""Routing statistics in the API server: snapshot cache, JSON API, window."""
