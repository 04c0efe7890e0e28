"""Container registries: image references, the distribution-API client, tag selection.

A library shared by the services (like services.secrets), not a service.
"""
