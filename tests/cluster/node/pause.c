/*
 * The sandbox ("pause") process of every Pod of mapguard's one-node cluster:
 * it holds the Pod's namespaces open and does nothing else. As PID 1 of a Pod
 * that shares its PID namespace it also reaps orphaned children. It exits 0
 * on SIGINT or SIGTERM, which the container runtime sends to stop the Pod.
 *
 * Built static (gcc -static) by .ci/install-node.sh into an image from
 * scratch; see tests/cluster/node/pins.sh for its tag.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void reap(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static int on(int sig, void (*handler)(int), int flags)
{
	struct sigaction action;

	memset(&action, 0, sizeof(action));
	action.sa_handler = handler;
	action.sa_flags = flags;
	sigemptyset(&action.sa_mask);
	return sigaction(sig, &action, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("mapguard pause 1");
		return 0;
	}
	if (on(SIGINT, stop, 0) || on(SIGTERM, stop, 0) ||
	    on(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART)) {
		perror("sigaction");
		return 1;
	}
	for (;;)
		pause();
}
