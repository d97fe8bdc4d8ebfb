/* comm_bootstrap.c: the process group from the environment, and rank 0's
 * blob (NCCL's unique id) handed to every rank over TCP (moert_comm.h). */
#include "moert_comm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The frame that carries the blob: magic, then the length big-endian. */
#define FRAME_MAGIC "MOERTID1"
#define FRAME_MAGIC_LEN 8
#define FRAME_HEADER_LEN (FRAME_MAGIC_LEN + 4)

/* Pause between two attempts to reach rank 0. */
#define CONNECT_RETRY_S 0.1

/* ---------------------------------------------------------------------------
 * The environment
 * ------------------------------------------------------------------------- */

/* The variables that give rank, world size and local rank, per launcher. */
enum { VAR_WORLD, VAR_RANK, VAR_LOCAL, VAR_COUNT };

static const struct launcher {
	const char *name;
	const char *vars[VAR_COUNT];
} launchers[] = {
	{"torchrun", {"WORLD_SIZE", "RANK", "LOCAL_RANK"}},
	{"openmpi",
	 {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
	  "OMPI_COMM_WORLD_LOCAL_RANK"}},
};

/* getenv(name), or NULL with an error when it is set but empty. *value is
 * NULL when the variable is unset. */
static int env_get(const char *name, const char **value, moert_error *err)
{
	*value = getenv(name);
	if (*value && !**value) {
		moert_error_set(err, "%s is set but empty", name);
		return -1;
	}
	return 0;
}

/* Parses a variable's value: decimal digits only. Values too large for any
 * range checked here come out as UINT32_MAX + 1 (the message quotes the text
 * anyway). */
static int env_uint(const char *name, const char *value, uint64_t *out,
		    moert_error *err)
{
	const uint64_t big = (uint64_t)UINT32_MAX + 1;
	uint64_t v = 0;

	for (const char *p = value; *p; p++) {
		if (*p < '0' || *p > '9') {
			moert_error_set(err,
					"%s='%s' is not a non-negative decimal "
					"integer",
					name, value);
			return -1;
		}
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > big)
			v = big;
	}
	*out = v;
	return 0;
}

/* Reads rank, world size and local rank with launcher l's variables, of
 * which at least one is set. */
static int env_ranks(const struct launcher *l, moert_comm_env *e,
		     moert_error *err)
{
	const char *text[VAR_COUNT];
	uint64_t v[VAR_COUNT];
	int set = -1;

	for (int i = 0; i < VAR_COUNT; i++) {
		if (env_get(l->vars[i], &text[i], err))
			return -1;
		if (text[i] && set < 0)
			set = i;
	}
	for (int i = 0; i < VAR_COUNT; i++) {
		if (!text[i]) {
			moert_error_set(err, "%s is set but %s is not",
					l->vars[set], l->vars[i]);
			return -1;
		}
		if (env_uint(l->vars[i], text[i], &v[i], err))
			return -1;
	}
	if (v[VAR_WORLD] < 1 || v[VAR_WORLD] > MOERT_COMM_MAX_WORLD) {
		moert_error_set(err, "%s=%s is not between 1 and %d",
				l->vars[VAR_WORLD], text[VAR_WORLD],
				MOERT_COMM_MAX_WORLD);
		return -1;
	}
	for (int i = VAR_RANK; i < VAR_COUNT; i++) {
		if (v[i] >= v[VAR_WORLD]) {
			moert_error_set(err, "%s=%s is not below %s=%s",
					l->vars[i], text[i], l->vars[VAR_WORLD],
					text[VAR_WORLD]);
			return -1;
		}
	}
	e->rank = (int)v[VAR_RANK];
	e->world_size = (int)v[VAR_WORLD];
	e->local_rank = (int)v[VAR_LOCAL];
	e->launcher = l->name;
	return 0;
}

/* True when any of launcher l's variables is set (even empty). */
static bool launcher_present(const struct launcher *l)
{
	for (int i = 0; i < VAR_COUNT; i++)
		if (getenv(l->vars[i]))
			return true;
	return false;
}

int moert_comm_env_read(moert_comm_env *e, moert_error *err)
{
	moert_comm_env r;
	const char *addr, *port;
	size_t n_launchers = sizeof launchers / sizeof launchers[0];
	size_t i;

	memset(&r, 0, sizeof r);
	r.world_size = 1;
	r.master_port = MOERT_COMM_DEFAULT_PORT;
	r.launcher = "single";
	for (i = 0; i < n_launchers; i++) {
		if (launcher_present(&launchers[i])) {
			if (env_ranks(&launchers[i], &r, err))
				return -1;
			break;
		}
	}

	if (env_get("MASTER_ADDR", &addr, err))
		return -1;
	if (addr) {
		if (strlen(addr) >= sizeof r.master_addr) {
			/* Shown in part, so that the message keeps its end. */
			moert_error_set(err,
					"MASTER_ADDR=%.40s... is %zu bytes long, "
					"more than %zu",
					addr, strlen(addr),
					sizeof r.master_addr - 1);
			return -1;
		}
		strcpy(r.master_addr, addr);
	} else if (r.world_size > 1) {
		moert_error_set(err, "MASTER_ADDR is not set (needed for a world "
				     "size of %d)",
				r.world_size);
		return -1;
	}

	if (env_get("MASTER_PORT", &port, err))
		return -1;
	if (port) {
		uint64_t v;

		if (env_uint("MASTER_PORT", port, &v, err))
			return -1;
		if (v < 1 || v > 65535) {
			moert_error_set(err,
					"MASTER_PORT=%s is not between 1 and "
					"65535",
					port);
			return -1;
		}
		r.master_port = (int)v;
	}
	*e = r;
	return 0;
}

/* ---------------------------------------------------------------------------
 * Sockets with deadlines
 *
 * Every socket is non-blocking; poll() waits for it, never past the deadline
 * (a moert_now() value), so no call can hang.
 * ------------------------------------------------------------------------- */

/* Makes fd non-blocking and closed on exec. */
static int fd_prepare(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -1;
	fl = fcntl(fd, F_GETFD);
	if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
		return -1;
	return 0;
}

/* Waits until fd has one of events. Returns 1 when it has (or has an error
 * condition, which the next call on it reports), 0 at the deadline, -1 when
 * poll fails (errno). */
static int wait_fd(int fd, short events, double deadline)
{
	for (;;) {
		struct pollfd p = {.fd = fd, .events = events};
		double left = deadline - moert_now();
		int ms, n;

		if (left <= 0)
			return 0;
		/* Rounded up, so that the deadline has passed on a 0. */
		ms = left >= INT_MAX / 1000 ? INT_MAX : (int)(left * 1000) + 1;
		n = poll(&p, 1, ms);
		if (n > 0)
			return 1;
		if (n < 0 && errno != EINTR)
			return -1;
	}
}

/* Sends (out) or receives exactly n bytes of buf. Returns 0, or -1 with errno
 * ETIMEDOUT at the deadline, 0 when the peer closed the connection first,
 * else that of the failed call. *done counts the bytes moved. */
static int transfer(int fd, bool out, void *buf, size_t n, double deadline,
		    size_t *done)
{
	unsigned char *p = buf;

	*done = 0;
	while (*done < n) {
		ssize_t k = out ? send(fd, p + *done, n - *done, MSG_NOSIGNAL)
				: recv(fd, p + *done, n - *done, 0);
		int ready;

		if (k > 0) {
			*done += (size_t)k;
			continue;
		}
		if (k == 0) {
			errno = 0;
			return -1;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		ready = wait_fd(fd, out ? POLLOUT : POLLIN, deadline);
		if (ready <= 0) {
			if (ready == 0)
				errno = ETIMEDOUT;
			return -1;
		}
	}
	return 0;
}

/* Reports a failed transfer (errno as transfer leaves it): "comm: rank 1:
 * receiving the header from 10.0.0.1:29500: connection closed after 5 of 12
 * bytes". */
static void transfer_error(moert_error *err, int rank, const char *what,
			   const char *peer, size_t done, size_t n,
			   double timeout_s)
{
	int e = errno;

	if (e == 0)
		moert_error_set(err,
				"comm: rank %d: %s %s: connection closed after "
				"%zu of %zu bytes",
				rank, what, peer, done, n);
	else if (e == ETIMEDOUT)
		moert_error_set(err,
				"comm: rank %d: %s %s: timed out after %g s "
				"(%zu of %zu bytes)",
				rank, what, peer, timeout_s, done, n);
	else
		moert_error_set(err, "comm: rank %d: %s %s: %s (after %zu of %zu "
				     "bytes)",
				rank, what, peer, strerror(e), done, n);
}

/* "host:port", or "[host]:port" for an IPv6 address. */
static void host_port(char *buf, size_t size, const char *host, int port)
{
	snprintf(buf, size, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
		 port);
}

/* A socket address as host_port() writes it. */
static void sockaddr_text(char *buf, size_t size, const struct sockaddr *sa,
			  socklen_t len)
{
	char host[NI_MAXHOST], serv[NI_MAXSERV];

	if (getnameinfo(sa, len, host, sizeof host, serv, sizeof serv,
			NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		snprintf(buf, size, "(unknown address)");
	else
		host_port(buf, size, host, atoi(serv));
}

/* ---------------------------------------------------------------------------
 * Rank 0: listen and send
 * ------------------------------------------------------------------------- */

/* A socket listening on port on every interface: IPv6 dual-stack (IPv4
 * clients too), or IPv4 alone where IPv6 is unavailable. */
static int listen_any(int port, moert_error *err)
{
	static const int families[] = {AF_INET6, AF_INET};
	int last = 0;

	for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
		struct sockaddr_storage ss;
		socklen_t len;
		int one = 1, zero = 0;
		int fd = socket(families[i], SOCK_STREAM, 0);

		if (fd < 0) {
			last = errno;
			continue;
		}
		memset(&ss, 0, sizeof ss);
		if (families[i] == AF_INET6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
			a->sin6_family = AF_INET6;
			a->sin6_addr = in6addr_any;
			a->sin6_port = htons((uint16_t)port);
			len = sizeof *a;
		} else {
			struct sockaddr_in *a = (struct sockaddr_in *)&ss;
			a->sin_family = AF_INET;
			a->sin_addr.s_addr = htonl(INADDR_ANY);
			a->sin_port = htons((uint16_t)port);
			len = sizeof *a;
		}
		if (fd_prepare(fd) == 0 &&
		    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
			       sizeof one) == 0 &&
		    (families[i] != AF_INET6 ||
		     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero,
				sizeof zero) == 0) &&
		    bind(fd, (struct sockaddr *)&ss, len) == 0 &&
		    listen(fd, SOMAXCONN) == 0)
			return fd;
		last = errno;
		close(fd);
		/* The port is taken: IPv4 alone would not change that. */
		if (last == EADDRINUSE)
			break;
	}
	moert_error_set(err, "comm: rank 0: cannot listen on port %d (%s)", port,
			strerror(last));
	return -1;
}

/* Sends the frame (header, then blob) to peer on fd. */
static int send_frame(int fd, const unsigned char *header, const void *blob,
		      size_t len, const char *peer, double deadline,
		      double timeout_s, moert_error *err)
{
	size_t done;

	if (transfer(fd, true, (void *)header, FRAME_HEADER_LEN, deadline,
		     &done)) {
		transfer_error(err, 0, "sending the header to", peer, done,
			       FRAME_HEADER_LEN, timeout_s);
		return -1;
	}
	if (transfer(fd, true, (void *)blob, len, deadline, &done)) {
		transfer_error(err, 0, "sending the id to", peer, done, len,
			       timeout_s);
		return -1;
	}
	return 0;
}

/* Rank 0: accepts world_size - 1 connections, one after the other, and
 * sends each the frame. */
static int serve_blob(const moert_comm_env *e, const void *blob,
		      size_t len, double deadline, double timeout_s,
		      moert_error *err)
{
	unsigned char header[FRAME_HEADER_LEN];
	int served = 0, rc = -1;
	int lfd = listen_any(e->master_port, err);

	if (lfd < 0)
		return -1;
	memcpy(header, FRAME_MAGIC, FRAME_MAGIC_LEN);
	for (int i = 0; i < 4; i++)
		header[FRAME_MAGIC_LEN + i] = (unsigned char)(len >> (24 - 8 * i));

	while (served < e->world_size - 1) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		char peer[NI_MAXHOST + 16];
		int fd, sent, ready = wait_fd(lfd, POLLIN, deadline);

		if (ready == 0) {
			moert_error_set(err,
					"comm: rank 0: only %d of the %d other "
					"ranks connected to port %d within %g s",
					served, e->world_size - 1,
					e->master_port, timeout_s);
			goto out;
		}
		fd = ready < 0 ? -1 : accept(lfd, (struct sockaddr *)&ss, &sl);
		if (fd < 0) {
			/* A connection dropped before we took it, or a
			 * signal: wait for the next. */
			if (ready > 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
					  errno == ECONNABORTED || errno == EINTR))
				continue;
			moert_error_set(err, "comm: rank 0: accepting on port %d: %s",
					e->master_port, strerror(errno));
			goto out;
		}
		sockaddr_text(peer, sizeof peer, (struct sockaddr *)&ss, sl);
		if (fd_prepare(fd) != 0) {
			moert_error_set(err, "comm: rank 0: preparing the socket "
					     "of %s: %s",
					peer, strerror(errno));
			close(fd);
			goto out;
		}
		sent = send_frame(fd, header, blob, len, peer, deadline,
				  timeout_s, err);
		close(fd);
		if (sent != 0)
			goto out;
		served++;
	}
	rc = 0;
out:
	close(lfd);
	return rc;
}

/* ---------------------------------------------------------------------------
 * Other ranks: connect and receive
 * ------------------------------------------------------------------------- */

/* True when fd is connected to itself: a TCP simultaneous open that Linux
 * allows when the local port it picks is the one asked for on this host,
 * with nobody listening there. */
static bool self_connected(int fd)
{
	struct sockaddr_storage a, b;
	socklen_t la = sizeof a, lb = sizeof b;

	memset(&a, 0, sizeof a);
	memset(&b, 0, sizeof b);
	return getsockname(fd, (struct sockaddr *)&a, &la) == 0 &&
	       getpeername(fd, (struct sockaddr *)&b, &lb) == 0 && la == lb &&
	       memcmp(&a, &b, la) == 0;
}

/* One round of attempts on every address of MASTER_ADDR. Returns a connected
 * socket, or -1 with the reason in why (which holds the previous round's). */
static int connect_once(const moert_comm_env *e, double deadline, char *why,
			size_t why_size)
{
	struct addrinfo hints, *list, *ai;
	char serv[16];
	int fd = -1, rc;

	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(serv, sizeof serv, "%d", e->master_port);
	rc = getaddrinfo(e->master_addr, serv, &hints, &list);
	if (rc != 0) {
		snprintf(why, why_size, "%s",
			 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return -1;
	}
	for (ai = list; ai && fd < 0; ai = ai->ai_next) {
		int soerr = 0;
		socklen_t sl = sizeof soerr;

		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd < 0 || fd_prepare(fd) != 0) {
			soerr = errno;
		} else if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
			/* In progress (after EINTR too): wait, then ask
			 * how it went. */
			soerr = errno;
			if (soerr == EINPROGRESS || soerr == EINTR) {
				int ready = wait_fd(fd, POLLOUT, deadline);

				if (ready == 0)
					soerr = ETIMEDOUT;
				else if (ready < 0 ||
					 getsockopt(fd, SOL_SOCKET, SO_ERROR,
						    &soerr, &sl) != 0)
					soerr = errno;
			}
		}
		if (soerr == 0 && self_connected(fd))
			soerr = ECONNREFUSED;
		if (soerr != 0) {
			/* A timeout at the deadline says less than what an
			 * earlier attempt met (refused, unreachable): keep
			 * that. */
			if (soerr != ETIMEDOUT || !why[0])
				snprintf(why, why_size, "%s", strerror(soerr));
			if (fd >= 0)
				close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(list);
	return fd;
}

/* Connects to rank 0, retrying every CONNECT_RETRY_S until the deadline. */
static int connect_master(const moert_comm_env *e, const char *peer,
			  double deadline, double timeout_s, moert_error *err)
{
	char why[256] = "";

	for (;;) {
		int fd = connect_once(e, deadline, why, sizeof why);
		double left = deadline - moert_now();
		struct timespec ts;

		if (fd >= 0)
			return fd;
		if (left <= 0)
			break;
		if (left > CONNECT_RETRY_S)
			left = CONNECT_RETRY_S;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)(left * 1e9);
		nanosleep(&ts, NULL);
	}
	moert_error_set(err, "comm: rank %d: cannot connect to %s within %g s (%s)",
			e->rank, peer, timeout_s, why);
	return -1;
}

/* Writes n bytes as C string text: printable ASCII as is, the rest (and '"'
 * and '\\') escaped. */
static void escape_bytes(char *buf, size_t size, const unsigned char *p,
			 size_t n)
{
	size_t k = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < n && k + 4 < size; i++) {
		if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\')
			buf[k++] = (char)p[i];
		else
			k += (size_t)snprintf(buf + k, size - k, "\\x%02x", p[i]);
	}
	buf[k] = '\0';
}

/* Any other rank: connects to rank 0 and receives the frame into blob. */
static int fetch_blob(const moert_comm_env *e, void *blob, size_t len,
		      double deadline, double timeout_s, moert_error *err)
{
	unsigned char header[FRAME_HEADER_LEN];
	char peer[MOERT_COMM_ADDR_MAX + 16];
	uint64_t sent_len = 0;
	size_t done;
	int rc = -1, fd;

	host_port(peer, sizeof peer, e->master_addr, e->master_port);
	fd = connect_master(e, peer, deadline, timeout_s, err);
	if (fd < 0)
		return -1;
	if (transfer(fd, false, header, sizeof header, deadline, &done)) {
		transfer_error(err, e->rank, "receiving the header from", peer,
			       done, sizeof header, timeout_s);
		goto out;
	}
	if (memcmp(header, FRAME_MAGIC, FRAME_MAGIC_LEN) != 0) {
		char got[4 * FRAME_MAGIC_LEN + 1];

		escape_bytes(got, sizeof got, header, FRAME_MAGIC_LEN);
		moert_error_set(err,
				"comm: rank %d: %s is not a moert rank 0: "
				"received \"%s\" instead of the magic \"%s\"",
				e->rank, peer, got, FRAME_MAGIC);
		goto out;
	}
	for (int i = 0; i < 4; i++)
		sent_len = sent_len << 8 | header[FRAME_MAGIC_LEN + i];
	if (sent_len != len) {
		moert_error_set(err,
				"comm: rank %d: %s sends a %llu-byte id, "
				"expected %zu bytes",
				e->rank, peer, (unsigned long long)sent_len, len);
		goto out;
	}
	if (transfer(fd, false, blob, len, deadline, &done)) {
		transfer_error(err, e->rank, "receiving the id from", peer, done,
			       len, timeout_s);
		goto out;
	}
	rc = 0;
out:
	close(fd);
	return rc;
}

int moert_comm_exchange(const moert_comm_env *e, void *blob, size_t len,
			double timeout_s, moert_error *err)
{
	double deadline;

	if (!e || e->world_size < 1 || e->world_size > MOERT_COMM_MAX_WORLD ||
	    e->rank < 0 || e->rank >= e->world_size || e->master_port < 1 ||
	    e->master_port > 65535) {
		moert_error_set(err, "comm: invalid process group (rank %d of %d, "
				     "port %d)",
				e ? e->rank : -1, e ? e->world_size : 0,
				e ? e->master_port : 0);
		return -1;
	}
	if (!(timeout_s > 0) || !isfinite(timeout_s)) {
		moert_error_set(err, "comm: rank %d: timeout %g s is not positive "
				     "and finite",
				e->rank, timeout_s);
		return -1;
	}
	if (!blob && len > 0) {
		moert_error_set(err, "comm: rank %d: no buffer for a %zu-byte id",
				e->rank, len);
		return -1;
	}
	if (len > UINT32_MAX) {
		moert_error_set(err, "comm: rank %d: a %zu-byte id is longer than "
				     "the frame allows (%lu bytes)",
				e->rank, len, (unsigned long)UINT32_MAX);
		return -1;
	}
	if (e->world_size == 1)
		return 0;
	if (!e->master_addr[0] && e->rank > 0) {
		moert_error_set(err, "comm: rank %d: no MASTER_ADDR to reach rank 0",
				e->rank);
		return -1;
	}
	deadline = moert_now() + timeout_s;
	return e->rank == 0
		       ? serve_blob(e, blob, len, deadline, timeout_s, err)
		       : fetch_blob(e, blob, len, deadline, timeout_s, err);
}
