"""The gateway's request side: body models, JSON and size limits, parameter checks."""
