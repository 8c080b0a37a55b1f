"""Prometheus metrics: the instruments, what the domain records in them, the scrape-time
backlog gauges and the exposition (one process, or every process of a host in
prometheus-client's multiprocess mode). Served by ``GET /metrics`` (:mod:`genplane.api.operability`)."""
