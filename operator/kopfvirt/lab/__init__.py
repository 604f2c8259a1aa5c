"""The lab: a real Kubernetes control plane and real libvirt nodes on one machine.

It stands in for kind where no container engine exists: kube-apiserver, etcd,
kube-controller-manager and kube-scheduler run as host processes; each lab node is a
network plus mount namespace with its own libvirtd, sharing one storage path. A small
node stand-in plays the kubelet's part towards the API (Node, Lease, pod phases).
"""
