"""The names the controller, the agents and the plugin share on objects: plurals, labels
and finalizers, in one place, so no part imports another's module for a constant (loading
the controller must not load libvirt)."""

from . import GROUP

VMS = "virtualmachines"
MIGRATIONS = "migrations"
STORAGE_POOLS = "storagepools"
DEVICES = "passthroughdevices"
# On a VM (and a PassthroughDevice): the node whose agent runs it (holds it).
NODE_LABEL = f"{GROUP}/node"
# A VM's finalizer while a node's agent may hold its domain: agent.kopfvirt.io/<node>.
AGENT_FINALIZER_PREFIX = f"agent.{GROUP}/"
# The agent pods (the plugin finds the operator's namespace by them; the controller, the
# agent on a VM's node).
AGENT_SELECTOR = "app.kubernetes.io/name=kopfvirt,app.kubernetes.io/component=agent"
# The agents' ServiceAccount (in the operator's namespace); its pod-bound tokens carry
# their node in this extra of the user.
AGENT_ACCOUNT = "kopfvirt-agent"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
# Where each agent serves its VMs' console, VNC and XML to the controller (mutual TLS).
AGENT_STREAM_PORT = 8186
