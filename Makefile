# The two commands of the README: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LAB := $(VENV)/bin/kopfvirt-lab
export KUBECONFIG := $(CURDIR)/.lab/kubeconfig
CACHE := $(HOME)/.cache/kopfvirt
K8S_VERSION := v1.36.3
# The lab's own kubectl (built with the control plane), before any other on PATH.
export PATH := $(CACHE)/k8s/$(K8S_VERSION)/bin:$(CURDIR)/$(VENV)/bin:$(PATH)
HELM_VERSION := v3.22.0
HELM := $(CACHE)/bin/helm-$(HELM_VERSION)
export KOPFVIRT_HELM := $(HELM)

APT_PACKAGES := libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils libvirt-dev \
	pkg-config gcc etcd-server busybox-static cpio iproute2 util-linux genisoimage libxml2-utils \
	dmidecode ovmf pci.ids glusterfs-server glusterfs-client nfs-ganesha nfs-ganesha-vfs rpcbind tgt \
	qemu-block-extra libvirt-daemon-driver-storage-iscsi-direct libvirt-daemon-driver-storage-gluster \
	runc containernetworking-plugins buildah mmdebstrap iptables
# Packages that bring no command: libvirt's user-space iSCSI backend and QEMU's NFS client.
APT_FILES := /usr/lib/x86_64-linux-gnu/libvirt/storage-backend/libvirt_storage_backend_iscsi-direct.so \
	/usr/lib/x86_64-linux-gnu/qemu/block-nfs.so /usr/lib/cni/bridge /usr/lib/cni/host-local
APT_TOOLS := libvirtd virsh qemu-system-x86_64 qemu-img pkg-config gcc etcd cpio ip nsenter \
	virt-xml-validate dmidecode glusterd mount.glusterfs tgtd tgtadm ganesha.nfsd rpcbind rpcinfo qemu-io \
	runc buildah mmdebstrap iptables

.PHONY: demo test unit integration deps lab-deps venv helm manifests lab-up lab-down lab-status clean

demo: deps lab-up ## bring the lab up, start the example VM, show it running
	kubectl apply -f examples/vm-lab-guest.yaml
	kubectl wait --for=jsonpath='{.status.phase}'=Running virtualmachine/demo --timeout=120s
	kubectl get virtualmachines,pods -o wide
	@node=$$(kubectl get virtualmachine demo -o jsonpath='{.status.nodeName}'); sleep 8; \
	  echo "--- serial console of demo on $$node:"; \
	  $(LAB) exec $$node -- tail -n 3 /var/log/libvirt/qemu/default_demo-serial.log

test: deps ## unit tests, then integration tests against the lab (started if needed)
	$(PY) -m pytest -ra

unit: venv helm
	$(PY) -m pytest -ra tests/unit

integration: deps
	$(PY) -m pytest -ra tests/integration

deps: lab-deps venv helm

helm: $(HELM)

# Go: the machine's if recent enough, else the pinned toolchain fetched into the cache.
$(HELM):
	mkdir -p $(CACHE)/bin
	go=$$(bash lab/ensure-go.sh) && GOBIN=$(CACHE)/bin.tmp $$go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(CACHE)/bin.tmp/helm $@ && rmdir $(CACHE)/bin.tmp

# manifests/ is rendered from the chart (one source); tests/unit/test_chart.py checks they agree.
manifests: $(HELM)
	for t in rbac controller pdb migration-config passthrough-config agent libvirt webhook subresources agent-policy; do \
	  { echo "# Rendered from charts/kopfvirt by \`make manifests\`; do not edit."; \
	    $(HELM) template kopfvirt charts/kopfvirt --namespace kopfvirt-system --kube-version 1.36.3 --show-only templates/$$t.yaml; \
	  } > manifests/$$t.yaml; done
	for t in prometheusrule dashboard; do \
	  { echo "# Rendered from charts/kopfvirt by \`make manifests\`; do not edit."; \
	    $(HELM) template kopfvirt charts/kopfvirt --namespace kopfvirt-system --kube-version 1.36.3 --show-only templates/$$t.yaml \
	      --set metrics.prometheusRule.enabled=true,metrics.dashboards.enabled=true; \
	  } > manifests/monitoring/$$t.yaml; done
	cp crds/*.yaml charts/kopfvirt/crds/

lab-deps:
	@missing=0; for t in $(APT_TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing=1; [ -e /usr/share/misc/pci.ids ] || missing=1; \
	for f in $(APT_FILES); do [ -e $$f ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  [ "$$(id -u)" = 0 ] || { echo "error: installing Debian packages needs root"; exit 2; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

venv: $(VENV)/.installed

# The operator and, beside it, the developers' lab (lab/pyproject.toml), both editable.
$(VENV)/.installed: pyproject.toml lab/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]' -e ./lab
	touch $@

lab-up: deps
	$(LAB) up

lab-down:
	[ ! -x $(LAB) ] || $(LAB) down

lab-status:
	$(LAB) status

clean: lab-down
	rm -rf $(VENV) .pytest_cache
