"""The gatekeeper: the control plane's worker for change-ticket gates (polling ticketing
systems for external approvals) and GitHub deployment statuses — integrations that reach
services outside the clusters and record what they learned as events."""
