"""The pre-commit daemon: a per-user warm process that runs static audits for a thin client.

`client` (stdlib only) is the hook's entry; `server` keeps torchdoctor and the Python peer
linters imported and forks once per request; `runtime` and `wire` are what both sides share.
"""
