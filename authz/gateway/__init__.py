"""The video gateway's front half: HTTP request to the KVS API -> authenticated (principal, action, resource, context)."""
