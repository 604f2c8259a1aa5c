# The lab's plain container workload: a small HTTP server that integration tests run as a
# Deployment beside VMs. Built like the product's images, from Debian's packages.
FROM python:3.11-slim-bookworm
USER 65532:65532
WORKDIR /tmp
# Serves /tmp: a page named after the pod (written at start) tells which pod answered.
ENTRYPOINT ["sh", "-c", "hostname > /tmp/index.html && exec python3 -m http.server 8080"]
