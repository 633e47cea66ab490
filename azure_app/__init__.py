"""The Azure frontend (Azure Functions, Python v2 model)."""
