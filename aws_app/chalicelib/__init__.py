"""Adapters and composition root of the AWS frontend (bundled with the Chalice app)."""
