"""The cluster-wide controller: placement through reservation pods, then hand-off to agents."""
