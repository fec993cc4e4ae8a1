"""The Kopf operator: thin handlers, reconcilers, pure manifest builders, a kube client layer."""
