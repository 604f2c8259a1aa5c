# Three images from one file:
#   docker build --target operator    -t kopfvirt:0.1.0 .              (controller and node agent)
#   docker build --target reservation -t kopfvirt-reservation:0.1.0 .  (what reservation pods run)
#   docker build --target libvirt     -t kopfvirt-libvirt:0.1.0 .      (libvirtd + QEMU for the libvirt DaemonSet)
# The lab builds them without a registry (lab/kopfvirt_lab/images.py).
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config libvirt-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# The agent uses qemu-img and genisoimage for disks (qemu-block-extra and libnfs for disks on
# NFS without a kernel client), and pci.ids for device names; the plugin reaches virsh through it.
FROM python:3.11-slim-bookworm AS operator
RUN apt-get update && apt-get install -y --no-install-recommends libvirt0 libvirt-clients qemu-utils \
    qemu-block-extra libnfs13 genisoimage pci.ids && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# A named user for uid 65532: kopf asks the system who it runs as (getpass), and a uid
# without a passwd entry stops it before it starts.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kopfvirt
USER 65532:65532
ENTRYPOINT ["kopfvirt"]

# A VM's reservation pod only holds its place on the node (the VM runs under libvirtd):
# one static program that waits, in an otherwise empty image, run as a non-root user.
FROM debian:bookworm-slim AS reservation-build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY images/reservation.c /src/
RUN gcc -static -Os -s -o /reservation /src/reservation.c

FROM scratch AS reservation
COPY --from=reservation-build /reservation /reservation
USER 65532:65532
ENTRYPOINT ["/reservation"]

FROM debian:bookworm-slim AS libvirt
RUN apt-get update && apt-get install -y --no-install-recommends libvirt-daemon-system \
    qemu-system-x86 qemu-utils qemu-block-extra libvirt-daemon-driver-storage-gluster \
    libvirt-daemon-driver-storage-iscsi-direct glusterfs-client ovmf dmidecode tini && rm -rf /var/lib/apt/lists/*
# Peers reach this libvirtd over TLS only, with the node's certificate (see docs/migration.md).
COPY images/libvirt/libvirtd.conf images/libvirt/qemu.conf /usr/share/kopfvirt/
RUN cat /usr/share/kopfvirt/libvirtd.conf >> /etc/libvirt/libvirtd.conf \
    && cat /usr/share/kopfvirt/qemu.conf >> /etc/libvirt/qemu.conf \
    && mkdir -p /etc/pki/CA /etc/pki/libvirt/private && t=/var/lib/kopfvirt/tls \
    && ln -s $t/cacert.pem /etc/pki/CA/cacert.pem && ln -s $t/servercert.pem /etc/pki/libvirt/servercert.pem \
    && ln -s $t/serverkey.pem /etc/pki/libvirt/private/serverkey.pem \
    && ln -s $t/clientcert.pem /etc/pki/libvirt/clientcert.pem \
    && ln -s $t/clientkey.pem /etc/pki/libvirt/private/clientkey.pem
COPY images/libvirt/start.sh /usr/local/bin/kopfvirt-libvirtd
# Guests outlive this container (the hook moves QEMU out of its cgroups).
COPY images/libvirt/qemu-hook /etc/libvirt/hooks/qemu
# tini reaps the QEMUs libvirtd daemonizes: libvirt waits for an exited QEMU to be reaped,
# and libvirtd would leave them zombies (every stop would hang). With the pod's hostPID it
# is no PID 1, so it registers as their subreaper (-s).
ENTRYPOINT ["tini", "-s", "--", "kopfvirt-libvirtd"]
