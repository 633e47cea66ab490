"""Adapters and composition root of the Azure frontend (Cosmos DB store, Blob SAS presigner)."""
