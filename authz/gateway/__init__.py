"""The video gateway: HTTP requests to the KVS API -> authenticated (principal, action, resource, context)."""
