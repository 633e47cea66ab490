"""The AWS frontend (Chalice app for Lambda + API Gateway)."""
