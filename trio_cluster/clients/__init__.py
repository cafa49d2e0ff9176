"""The public clients: ``Client`` (one node), ``ClusterClient``, their pipelines, pub/sub,
locks, scripts and MONITOR."""
