"""Secret references (`SecretRef`): where a secret lives, and resolving one where it is used.

A library shared by the services (like services.principals), not a service: the agent
resolves a workload's references at apply time, the control plane resolves its own
credentials (registries, ticketing systems) when it calls out.
"""
