"""The node agent: the only part that talks to libvirt, for its own node's VMs only."""
