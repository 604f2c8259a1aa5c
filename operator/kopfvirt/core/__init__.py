"""The pure core: spec to domain XML, reservation pods, conditions. No I/O, no kopf."""
