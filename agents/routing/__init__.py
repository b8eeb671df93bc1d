"""Routing: contextual-bandit policies that choose an agent, model or adapter per request."""
