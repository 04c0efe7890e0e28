"""Follow repository: discovery of new images, turned into ordinary deploys."""
