"""Who may call what: route scopes and per-key quotas."""
