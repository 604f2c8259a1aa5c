"""One module per outside system: the Kubernetes API and libvirt."""
