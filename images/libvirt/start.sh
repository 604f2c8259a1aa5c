#!/bin/sh
# libvirtd listens for peers only with the node's certificate (it refuses to start without
# one), which the node's agent asks the controller for: wait for it, then start.
tls=/var/lib/kopfvirt/tls
until [ -s "$tls/cacert.pem" ] && [ -s "$tls/servercert.pem" ] && [ -s "$tls/serverkey.pem" ]; do
    echo "waiting for the node's libvirt certificate in $tls (the kopfvirt agent asks for it)"
    sleep 2
done
mkdir -p /var/log/libvirt/qemu
exec libvirtd --listen "$@"
