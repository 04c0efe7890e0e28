"""Notifications: the convergence record, pushed to webhooks as it happens."""
