"""Outbound network safety shared by jobs and webhooks alike.

Everything genplane sends to, or reads from, an address someone else chose goes through
here: which addresses may be dialled (:mod:`.addresses`), the pinned fetcher that keeps
a connection on the address that was checked (:mod:`.fetch`), and the two header
parsers every HTTP caller needs, ``Retry-After`` (:mod:`.retry_after`) and bearer
``Authorization`` (:mod:`.bearer`).

The package sits below every domain package: it imports none of them (accounts,
catalog, credits, generations, jobs, providers, storage, usage, webhooks, api, cli, db),
only :mod:`genplane.clock`, the standard library and HTTP libraries, so that each caller
maps its failures to its own errors and settings are passed in as plain values.
"""
