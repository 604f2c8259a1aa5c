"""Kopfvirt: virtual machines on Kubernetes, through libvirt and QEMU, on kopf."""

__version__ = "0.1.0"

GROUP = "kopfvirt.io"
VERSION = "v1alpha1"
# Where each node keeps its libvirt certificate for migration over TLS (agent/tls.py).
NODE_TLS_DIR = "/var/lib/kopfvirt/tls"
