/* The pod sandbox ("pause") process of the test node: holds the pod's namespaces, reaps orphaned
 * children (it is PID 1 of the pod when the pod shares its PID namespace) and exits on SIGTERM,
 * SIGINT or SIGHUP. Built with `gcc -static`; no libc needed at run time. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGTERM, &on_stop, NULL) < 0 || sigaction(SIGINT, &on_stop, NULL) < 0 ||
        sigaction(SIGHUP, &on_stop, NULL) < 0 || sigaction(SIGCHLD, &on_child, NULL) < 0) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
