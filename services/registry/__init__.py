"""Container registries: a client for the OCI distribution API (resolve a tag to a digest,
list a repository's tags) and the pure parts around it (image references, tag selection,
registry push notifications).

A library shared by the services (like services.secrets and services.principals), not a
service: the discovery service and the API use it; it imports none of them.
"""
