/* The reservation pod's only process (the Dockerfile's reservation target).
 *
 * A VM's reservation pod holds the VM's share of its node for kube-scheduler; the VM's
 * QEMU runs outside the pod, under libvirtd. So the pod's container has nothing to do but
 * wait, and end at once when the kubelet stops it (SIGTERM; as PID 1 a process gets no
 * default handler, so it must install one). Built static: the image holds this file only.
 */
#include <signal.h>
#include <unistd.h>

static void stop(int sig)
{
	(void)sig;
	_exit(0);
}

int main(void)
{
	signal(SIGTERM, stop);
	signal(SIGINT, stop);
	for (;;)
		pause();
}
