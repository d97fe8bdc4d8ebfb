/* comm_bootstrap.c: the process group from the environment, rank 0's blob
 * (NCCL's unique id) handed to every rank over TCP, and the watched process
 * group that keeps those connections to notice a peer's death
 * (moert_comm.h). */
#include "moert_comm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
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
/* The magic of moert_comm_group_open's frame. */
#define GROUP_MAGIC "MOERTGR1"
/* The other ranks' answer in a group: rank and world size, big-endian. */
#define ANSWER_LEN 8

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

/* OpenMPI: how many ranks run on this host, 1 .. r->world_size, from
 * OMPI_COMM_WORLD_LOCAL_SIZE; 0 when that is unset. */
static int env_local_size(const moert_comm_env *r, int *local_size,
			  moert_error *err)
{
	static const char name[] = "OMPI_COMM_WORLD_LOCAL_SIZE";
	const char *text;
	uint64_t v;

	*local_size = 0;
	if (env_get(name, &text, err))
		return -1;
	if (!text)
		return 0;
	if (env_uint(name, text, &v, err))
		return -1;
	if (v < 1 || v > (uint64_t)r->world_size) {
		moert_error_set(err, "%s=%s is not between 1 and %s=%d", name,
				text, "OMPI_COMM_WORLD_SIZE", r->world_size);
		return -1;
	}
	*local_size = (int)v;
	return 0;
}

int moert_comm_env_read(moert_comm_env *e, moert_error *err)
{
	moert_comm_env r;
	const char *addr, *port;
	size_t n_launchers = sizeof launchers / sizeof launchers[0];
	size_t i;
	int local_size = 0;

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
	if (strcmp(r.launcher, "openmpi") == 0 &&
	    env_local_size(&r, &local_size, err))
		return -1;

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
	} else if (r.world_size > 1 && local_size == r.world_size) {
		/* mpirun with every rank on this host. */
		strcpy(r.master_addr, "127.0.0.1");
	} else if (r.world_size > 1) {
		char where[64] = "";

		if (local_size > 0)
			snprintf(where, sizeof where,
				 " with OMPI_COMM_WORLD_LOCAL_SIZE=%d",
				 local_size);
		moert_error_set(err,
				"MASTER_ADDR is not set (needed for a world "
				"size of %d%s): set it to rank 0's host, e.g. "
				"with mpirun -x MASTER_ADDR=host, when the "
				"ranks span several hosts",
				r.world_size, where);
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

/* The connections that moert_comm_group_open keeps: fd[i] leads to rank
 * rank[i]; n of them (world_size - 1 on rank 0, 1 elsewhere). */
struct links {
	int n;
	int *fd;
	int *rank;
};

static void links_close(struct links *l)
{
	for (int i = 0; i < l->n; i++)
		close(l->fd[i]);
	l->n = 0;
}

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
		int fd = socket(families[i], SOCK_STREAM | SOCK_CLOEXEC, 0);

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

static void put_be32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (24 - 8 * i));
}

static uint32_t get_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

/* Rank 0, keeping the connection: receives the peer's answer (its rank and
 * world size) on fd and stores fd in keep. seen[r] marks the ranks already
 * answered. */
static int take_peer(const moert_comm_env *e, int fd, const char *peer,
		     unsigned char *seen, struct links *keep, double deadline,
		     double timeout_s, moert_error *err)
{
	unsigned char answer[ANSWER_LEN];
	uint32_t rank, world;
	size_t done;

	if (transfer(fd, false, answer, sizeof answer, deadline, &done)) {
		transfer_error(err, 0, "receiving the rank of", peer, done,
			       sizeof answer, timeout_s);
		return -1;
	}
	rank = get_be32(answer);
	world = get_be32(answer + 4);
	if (world != (uint32_t)e->world_size) {
		moert_error_set(err,
				"comm: rank 0: %s says it is rank %lu of %lu, "
				"but the world size here is %d",
				peer, (unsigned long)rank, (unsigned long)world,
				e->world_size);
		return -1;
	}
	if (rank < 1 || rank >= world) {
		moert_error_set(err,
				"comm: rank 0: %s says it is rank %lu, not "
				"between 1 and %d",
				peer, (unsigned long)rank, e->world_size - 1);
		return -1;
	}
	if (seen[rank]) {
		moert_error_set(err,
				"comm: rank 0: %s says it is rank %lu, which "
				"another connection already is",
				peer, (unsigned long)rank);
		return -1;
	}
	seen[rank] = 1;
	keep->fd[keep->n] = fd;
	keep->rank[keep->n] = (int)rank;
	keep->n++;
	return 0;
}

/* Rank 0: accepts world_size - 1 connections, one after the other, and
 * sends each the frame; then closes each, or, with keep, takes its answer
 * and stores it in keep (which the caller closes on failure). */
static int serve_blob(const moert_comm_env *e, const char *magic,
		      const void *blob, size_t len, double deadline,
		      double timeout_s, struct links *keep, moert_error *err)
{
	unsigned char header[FRAME_HEADER_LEN];
	unsigned char *seen = NULL;
	int served = 0, rc = -1;
	int lfd;

	if (keep) {
		seen = calloc((size_t)e->world_size, 1);
		if (!seen) {
			moert_error_set(err, "comm: rank 0: out of memory");
			return -1;
		}
	}
	lfd = listen_any(e->master_port, err);
	if (lfd < 0) {
		free(seen);
		return -1;
	}
	memcpy(header, magic, FRAME_MAGIC_LEN);
	put_be32(header + FRAME_MAGIC_LEN, (uint32_t)len);

	while (served < e->world_size - 1) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		char peer[NI_MAXHOST + 16];
		int fd, ready = wait_fd(lfd, POLLIN, deadline);

		if (ready == 0) {
			moert_error_set(err,
					"comm: rank 0: only %d of the %d other "
					"ranks connected to port %d within %g s",
					served, e->world_size - 1,
					e->master_port, timeout_s);
			goto out;
		}
		fd = ready < 0 ? -1
			       : accept4(lfd, (struct sockaddr *)&ss, &sl,
					 SOCK_CLOEXEC);
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
		if (send_frame(fd, header, blob, len, peer, deadline, timeout_s,
			       err) != 0 ||
		    (keep && take_peer(e, fd, peer, seen, keep, deadline,
				       timeout_s, err) != 0)) {
			close(fd);
			goto out;
		}
		if (!keep)
			close(fd);
		served++;
	}
	rc = 0;
out:
	close(lfd);
	free(seen);
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

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
			    ai->ai_protocol);
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

/* The function that sends magic ("MOERTID1" or "MOERTGR1"). */
static const char *magic_caller(const char *magic)
{
	return strcmp(magic, GROUP_MAGIC) == 0 ? "moert_comm_group_open"
					       : "moert_comm_exchange";
}

/* Any other rank: connects to rank 0 and receives the frame into blob; then
 * closes the connection, or, with keep, answers with its rank and world size
 * and stores the connection in keep. */
static int fetch_blob(const moert_comm_env *e, const char *magic, void *blob,
		      size_t len, double deadline, double timeout_s,
		      struct links *keep, moert_error *err)
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
	if (memcmp(header, magic, FRAME_MAGIC_LEN) != 0) {
		const char *other = strcmp(magic, GROUP_MAGIC) == 0
					    ? FRAME_MAGIC
					    : GROUP_MAGIC;
		char got[4 * FRAME_MAGIC_LEN + 1];

		if (memcmp(header, other, FRAME_MAGIC_LEN) == 0) {
			moert_error_set(err,
					"comm: rank %d: rank 0 at %s called %s, "
					"this rank %s (every rank must call "
					"the same)",
					e->rank, peer, magic_caller(other),
					magic_caller(magic));
			goto out;
		}
		escape_bytes(got, sizeof got, header, FRAME_MAGIC_LEN);
		moert_error_set(err,
				"comm: rank %d: %s is not a moert rank 0: "
				"received \"%s\" instead of the magic \"%s\"",
				e->rank, peer, got, magic);
		goto out;
	}
	sent_len = get_be32(header + FRAME_MAGIC_LEN);
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
	if (keep) {
		unsigned char answer[ANSWER_LEN];

		put_be32(answer, (uint32_t)e->rank);
		put_be32(answer + 4, (uint32_t)e->world_size);
		if (transfer(fd, true, answer, sizeof answer, deadline,
			     &done)) {
			transfer_error(err, e->rank, "sending the rank to", peer,
				       done, sizeof answer, timeout_s);
			goto out;
		}
		keep->fd[0] = fd;
		keep->rank[0] = 0;
		keep->n = 1;
		return 0;
	}
	rc = 0;
out:
	close(fd);
	return rc;
}

/* ---------------------------------------------------------------------------
 * The exchange
 * ------------------------------------------------------------------------- */

/* The checks of moert_comm_exchange, before any socket. */
static int check_args(const moert_comm_env *e, const void *blob, size_t len,
		      double timeout_s, moert_error *err)
{
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
	if (e->world_size > 1 && !e->master_addr[0] && e->rank > 0) {
		moert_error_set(err, "comm: rank %d: no MASTER_ADDR to reach rank 0",
				e->rank);
		return -1;
	}
	return 0;
}

/* The exchange, arguments checked, world size above 1: without keep, every
 * connection is closed; with keep (room for world_size - 1 connections on
 * rank 0, 1 elsewhere), they are stored there on success and closed on
 * failure. */
static int run_exchange(const moert_comm_env *e, void *blob, size_t len,
			double timeout_s, struct links *keep, moert_error *err)
{
	const char *magic = keep ? GROUP_MAGIC : FRAME_MAGIC;
	double deadline = moert_now() + timeout_s;
	int rc = e->rank == 0 ? serve_blob(e, magic, blob, len, deadline,
					   timeout_s, keep, err)
			      : fetch_blob(e, magic, blob, len, deadline,
					   timeout_s, keep, err);

	if (rc != 0 && keep)
		links_close(keep);
	return rc;
}

int moert_comm_exchange(const moert_comm_env *e, void *blob, size_t len,
			double timeout_s, moert_error *err)
{
	if (check_args(e, blob, len, timeout_s, err))
		return -1;
	if (e->world_size == 1)
		return 0;
	return run_exchange(e, blob, len, timeout_s, NULL, err);
}

/* ---------------------------------------------------------------------------
 * The watched process group
 * ------------------------------------------------------------------------- */

struct moert_comm_group {
	int rank;
	char *prefix;
	struct links links; /* none with a world size of 1 */
	bool *finished;     /* [i]: links.rank[i] sent its bye byte */
	struct pollfd *pfd; /* the watcher's: the wakeup pipe, then links */
	int wake[2];        /* the wakeup pipe: close writes, the watcher reads */
	pthread_t thread;
	bool running; /* the watcher thread was started */
};

/* Writes the whole line to stderr (one write() unless interrupted). */
static void write_stderr(const char *s, size_t n)
{
	while (n > 0) {
		ssize_t k = write(STDERR_FILENO, s, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return;
		s += k;
		n -= (size_t)k;
	}
}

/* Peer rank `peer` is gone without its bye: says so and ends the process. */
static void peer_failed(const moert_comm_group *g, int peer)
{
	char line[512];
	int n = snprintf(line, sizeof line,
			 "%s: rank %d: rank %d ended without finishing "
			 "(crashed, killed, or stopped on an error); stopping "
			 "this rank too\n",
			 g->prefix, g->rank, peer);

	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof line) {
		n = (int)sizeof line - 1;
		line[n - 1] = '\n';
	}
	write_stderr(line, (size_t)n);
	_exit(1);
}

/* The watcher thread: polls the wakeup pipe and every connection until
 * moert_comm_group_close writes to the pipe. */
static void *watch_peers(void *arg)
{
	moert_comm_group *g = arg;
	struct pollfd *p = g->pfd;
	int n = g->links.n;

	for (;;) {
		int k = poll(p, (nfds_t)n + 1, -1);

		if (k < 0) {
			/* EINTR, or ENOMEM for a while: try again. */
			if (errno != EINTR) {
				struct timespec ts = {0, 10 * 1000 * 1000};

				nanosleep(&ts, NULL);
			}
			continue;
		}
		if (p[0].revents)
			return NULL;
		for (int i = 0; i < n; i++) {
			unsigned char buf[64];
			ssize_t got;

			if (p[i + 1].fd < 0 || !p[i + 1].revents)
				continue;
			got = read(p[i + 1].fd, buf, sizeof buf);
			if (got > 0) {
				/* Any other byte is ignored. */
				if (memchr(buf, 'B', (size_t)got))
					g->finished[i] = true;
				continue;
			}
			if (got < 0 && (errno == EINTR || errno == EAGAIN ||
					errno == EWOULDBLOCK))
				continue;
			/* The end of the connection, or an error on it
			 * (ECONNRESET): after the bye, the peer's orderly
			 * end; before it, a failure. */
			if (!g->finished[i])
				peer_failed(g, g->links.rank[i]);
			p[i + 1].fd = -1;
		}
	}
}

static void group_free(moert_comm_group *g)
{
	links_close(&g->links);
	for (int i = 0; i < 2; i++)
		if (g->wake[i] >= 0)
			close(g->wake[i]);
	free(g->links.fd);
	free(g->links.rank);
	free(g->finished);
	free(g->pfd);
	free(g->prefix);
	free(g);
}

moert_comm_group *moert_comm_group_open(const moert_comm_env *e,
					const char *prefix, void *blob,
					size_t len, double timeout_s,
					moert_error *err)
{
	moert_comm_group *g;
	sigset_t all, old;
	size_t cap;
	int rc;

	if (check_args(e, blob, len, timeout_s, err))
		return NULL;
	g = calloc(1, sizeof *g);
	if (!g) {
		moert_error_set(err, "comm: rank %d: out of memory", e->rank);
		return NULL;
	}
	g->rank = e->rank;
	g->wake[0] = g->wake[1] = -1;
	g->prefix = strdup(prefix && *prefix ? prefix : "moert");
	cap = e->rank == 0 ? (size_t)e->world_size - 1 : 1;
	if (!g->prefix)
		goto oom;
	if (e->world_size == 1)
		return g;
	g->links.fd = calloc(cap, sizeof *g->links.fd);
	g->links.rank = calloc(cap, sizeof *g->links.rank);
	g->finished = calloc(cap, sizeof *g->finished);
	g->pfd = calloc(cap + 1, sizeof *g->pfd);
	if (!g->links.fd || !g->links.rank || !g->finished || !g->pfd)
		goto oom;
	if (pipe2(g->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
		moert_error_set(err, "comm: rank %d: cannot make a pipe: %s",
				e->rank, strerror(errno));
		g->wake[0] = g->wake[1] = -1;
		group_free(g);
		return NULL;
	}
	if (run_exchange(e, blob, len, timeout_s, &g->links, err) != 0) {
		group_free(g);
		return NULL;
	}
	g->pfd[0].fd = g->wake[0];
	g->pfd[0].events = POLLIN;
	for (int i = 0; i < g->links.n; i++) {
		g->pfd[i + 1].fd = g->links.fd[i];
		g->pfd[i + 1].events = POLLIN;
	}
	/* The watcher takes no signal: they stay with the program's
	 * threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&g->thread, NULL, watch_peers, g);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		moert_error_set(err, "comm: rank %d: cannot start the watcher "
				     "thread: %s",
				e->rank, strerror(rc));
		group_free(g);
		return NULL;
	}
	g->running = true;
	return g;
oom:
	moert_error_set(err, "comm: rank %d: out of memory", e->rank);
	group_free(g);
	return NULL;
}

void moert_comm_group_close(moert_comm_group *g)
{
	if (!g)
		return;
	if (g->running) {
		const char one = 1;

		/* The pipe is empty and non-blocking: this write cannot
		 * block, and fails only on a broken program. */
		while (write(g->wake[1], &one, 1) < 0 && errno == EINTR)
			;
		pthread_join(g->thread, NULL);
		g->running = false;
	}
	for (int i = 0; i < g->links.n; i++) {
		/* A peer that has closed needs no bye (and may be gone). */
		if (!g->finished[i]) {
			while (send(g->links.fd[i], "B", 1, MSG_NOSIGNAL) < 0 &&
			       errno == EINTR)
				;
		}
	}
	group_free(g);
}
