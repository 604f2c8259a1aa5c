"""The lab: a real Kubernetes control plane and real libvirt nodes on one machine.

It stands in for kind where no container engine runs: kube-apiserver, etcd,
kube-controller-manager and kube-scheduler run as host processes; each lab node is a
network plus mount namespace with its own libvirtd, kubelet and containerd. The images
are built from the Dockerfile without a registry and imported into every node, and the
operator is installed from the Helm chart, as users install it (install.py).
"""
