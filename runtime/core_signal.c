/* core_signal.c: SIGINT/SIGTERM as a request to stop cleanly. */
#include "moert_core.h"

#include <errno.h>
#include <signal.h>
#include <string.h>

/* The only mutable globals of libmoert: written by the handler. */
static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t received_signal;

static void on_stop_signal(int sig)
{
	if (stop_requested) {
		/* Asked twice: stop now, the default way. The signal is
		 * blocked while we run, so it lands when we return. */
		struct sigaction dfl;
		memset(&dfl, 0, sizeof dfl);
		dfl.sa_handler = SIG_DFL;
		sigemptyset(&dfl.sa_mask);
		sigaction(sig, &dfl, NULL);
		raise(sig);
		return;
	}
	received_signal = sig;
	stop_requested = 1;
}

int moert_signal_install(moert_error *err)
{
	static const int sigs[] = {SIGINT, SIGTERM};
	struct sigaction sa;

	stop_requested = 0;
	received_signal = 0;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	/* SA_RESTART: no EINTR in the data loaders. */
	sa.sa_flags = SA_RESTART;
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
		if (sigaction(sigs[i], &sa, NULL) != 0) {
			moert_error_set(err, "cannot install handler for %s (%s)",
					strsignal(sigs[i]), strerror(errno));
			return -1;
		}
	}
	return 0;
}

bool moert_signal_stop_requested(void)
{
	return stop_requested != 0;
}

int moert_signal_received(void)
{
	return received_signal;
}
