/* test_comm.c: unit tests of libmoert's process-group bootstrap
 * (moert_comm.h): the environment, the id exchange and the watched process
 * group over loopback with forked ranks. Every network test is bounded: the library's own timeouts
 * (at most 3 s), children that wait with a deadline and are killed after it,
 * and an alarm that ends the whole program should a test hang anyway. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "moert_comm.h"

/* NCCL's unique id is 128 bytes. */
#define ID_LEN 128
/* Seconds any one test may take before SIGALRM ends the program. */
#define TEST_ALARM_S 6

/* ---- helpers ------------------------------------------------------------- */

static const char *const comm_vars[] = {
	"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
	"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
	"OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
};

/* Setup of every test: none of the variables set, and an alarm. */
static int setup(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof comm_vars / sizeof comm_vars[0]; i++)
		unsetenv(comm_vars[i]);
	alarm(TEST_ALARM_S);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	alarm(0);
	return 0;
}

/* Sets the variables of a NULL-terminated list of "NAME=value" (value may
 * be empty). */
static void set_env(const char *const *assignments)
{
	for (; *assignments; assignments++) {
		const char *eq = strchr(*assignments, '=');
		char name[64];

		assert_non_null(eq);
		assert_true((size_t)(eq - *assignments) < sizeof name);
		memcpy(name, *assignments, (size_t)(eq - *assignments));
		name[eq - *assignments] = '\0';
		assert_int_equal(setenv(name, eq + 1, 1), 0);
	}
}

/* A TCP port on 127.0.0.1 that nobody listens on (right now). */
static int free_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

/* A socket listening on 127.0.0.1 on a free port, stored in *port. */
static int listen_loopback(int *port)
{
	struct sockaddr_in a;
	socklen_t len = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(fd, 8), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

/* rank of world on 127.0.0.1:port. */
static moert_comm_env loopback_env(int rank, int world, int port)
{
	moert_comm_env e;

	memset(&e, 0, sizeof e);
	e.rank = rank;
	e.world_size = world;
	e.master_port = port;
	e.launcher = "test";
	strcpy(e.master_addr, "127.0.0.1");
	return e;
}

static void random_bytes(unsigned char *p, size_t n)
{
	FILE *f = fopen("/dev/urandom", "rb");

	assert_non_null(f);
	assert_int_equal(fread(p, 1, n, f), n);
	fclose(f);
}

/* Forks; the child gets an alarm as a last resort, and its output is not
 * doubled by buffers inherited from the parent. */
static pid_t fork_child(void)
{
	pid_t pid;

	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		alarm(TEST_ALARM_S - 1);
	return pid;
}

/* Waits at most timeout_s for child pid and returns its exit status; kills
 * it (the test then fails) when it takes longer. */
static int wait_child(pid_t pid, double timeout_s)
{
	struct timespec tick = {0, 10 * 1000 * 1000};
	double end = moert_now() + timeout_s;
	int status;

	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			break;
		assert_int_equal(r, 0);
		if (moert_now() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			fail_msg("child %d did not end within %g s", (int)pid,
				 timeout_s);
		}
		nanosleep(&tick, NULL);
	}
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

/* ---- the environment ----------------------------------------------------- */

static void test_env_single(void **state)
{
	moert_comm_env e;
	moert_error err;

	(void)state;
	memset(&e, 0x55, sizeof e);
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_int_equal(e.rank, 0);
	assert_int_equal(e.world_size, 1);
	assert_int_equal(e.local_rank, 0);
	assert_string_equal(e.master_addr, "");
	assert_int_equal(e.master_port, MOERT_COMM_DEFAULT_PORT);
	assert_int_equal(e.master_port, 29500);
	assert_string_equal(e.launcher, "single");

	/* err may be NULL; a world of 1 needs no MASTER_ADDR. */
	set_env((const char *const[]){"RANK=0", "WORLD_SIZE=1", "LOCAL_RANK=0",
				      NULL});
	assert_int_equal(moert_comm_env_read(&e, NULL), 0);
	assert_int_equal(e.world_size, 1);
	assert_string_equal(e.launcher, "torchrun");
}

static void test_env_torchrun(void **state)
{
	moert_comm_env e;
	moert_error err;

	(void)state;
	set_env((const char *const[]){"RANK=5", "WORLD_SIZE=8", "LOCAL_RANK=1",
				      "MASTER_ADDR=node-0.cluster",
				      "MASTER_PORT=1234", NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_int_equal(e.rank, 5);
	assert_int_equal(e.world_size, 8);
	assert_int_equal(e.local_rank, 1);
	assert_string_equal(e.master_addr, "node-0.cluster");
	assert_int_equal(e.master_port, 1234);
	assert_string_equal(e.launcher, "torchrun");

	/* torchrun's variables win over OpenMPI's; leading zeros and the
	 * bounds are fine. */
	set_env((const char *const[]){"RANK=065535", "WORLD_SIZE=65536",
				      "LOCAL_RANK=0", "MASTER_PORT=65535",
				      "OMPI_COMM_WORLD_RANK=1",
				      "OMPI_COMM_WORLD_SIZE=2",
				      "OMPI_COMM_WORLD_LOCAL_RANK=1", NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_int_equal(e.rank, 65535);
	assert_int_equal(e.world_size, 65536);
	assert_int_equal(e.local_rank, 0);
	assert_int_equal(e.master_port, 65535);
	assert_string_equal(e.launcher, "torchrun");
}

static void test_env_openmpi(void **state)
{
	moert_comm_env e;
	moert_error err;

	(void)state;
	set_env((const char *const[]){"OMPI_COMM_WORLD_RANK=3",
				      "OMPI_COMM_WORLD_SIZE=4",
				      "OMPI_COMM_WORLD_LOCAL_RANK=1",
				      "MASTER_ADDR=10.1.2.3", NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_int_equal(e.rank, 3);
	assert_int_equal(e.world_size, 4);
	assert_int_equal(e.local_rank, 1);
	assert_string_equal(e.master_addr, "10.1.2.3");
	assert_int_equal(e.master_port, 29500);
	assert_string_equal(e.launcher, "openmpi");

	/* A MASTER_ADDR that is set wins over the single-host default. */
	set_env((const char *const[]){"OMPI_COMM_WORLD_LOCAL_SIZE=4", NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_string_equal(e.master_addr, "10.1.2.3");
	/* On several hosts, with MASTER_ADDR given. */
	set_env((const char *const[]){"OMPI_COMM_WORLD_LOCAL_SIZE=1", NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_string_equal(e.master_addr, "10.1.2.3");
}

/* `mpirun -np N ./train` on one host: no MASTER_ADDR needed. */
static void test_env_openmpi_one_host(void **state)
{
	moert_comm_env e;
	moert_error err;

	(void)state;
	set_env((const char *const[]){"OMPI_COMM_WORLD_RANK=1",
				      "OMPI_COMM_WORLD_SIZE=2",
				      "OMPI_COMM_WORLD_LOCAL_RANK=1",
				      "OMPI_COMM_WORLD_LOCAL_SIZE=2",
				      "MASTER_PORT=4321", NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_int_equal(e.rank, 1);
	assert_int_equal(e.world_size, 2);
	assert_int_equal(e.local_rank, 1);
	assert_string_equal(e.master_addr, "127.0.0.1");
	assert_int_equal(e.master_port, 4321);
	assert_string_equal(e.launcher, "openmpi");

	/* A world of 1 needs no address: it stays empty. */
	set_env((const char *const[]){"OMPI_COMM_WORLD_RANK=0",
				      "OMPI_COMM_WORLD_SIZE=1",
				      "OMPI_COMM_WORLD_LOCAL_RANK=0",
				      "OMPI_COMM_WORLD_LOCAL_SIZE=1", NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_int_equal(e.world_size, 1);
	assert_string_equal(e.master_addr, "");

	/* OMPI_COMM_WORLD_LOCAL_SIZE alone does not make an OpenMPI
	 * launch. */
	setup(NULL);
	set_env((const char *const[]){"OMPI_COMM_WORLD_LOCAL_SIZE=2", NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_string_equal(e.launcher, "single");
	assert_string_equal(e.master_addr, "");
}

/* Up to 7 assignments, then NULL. */
struct bad_env {
	const char *env[8];
	const char *expect; /* a part of the message */
};

#define TORCHRUN_2 "RANK=1", "WORLD_SIZE=2", "LOCAL_RANK=1"
#define OMPI_4                                                                \
	"OMPI_COMM_WORLD_RANK=2", "OMPI_COMM_WORLD_SIZE=4",                   \
		"OMPI_COMM_WORLD_LOCAL_RANK=0"

static const struct bad_env bad_envs[] = {
	{{"RANK=3", "WORLD_SIZE=2", "LOCAL_RANK=0", "MASTER_ADDR=h"},
	 "RANK=3 is not below WORLD_SIZE=2"},
	{{"RANK=0", "WORLD_SIZE=2", "LOCAL_RANK=2", "MASTER_ADDR=h"},
	 "LOCAL_RANK=2 is not below WORLD_SIZE=2"},
	{{"RANK=99999999999999999999", "WORLD_SIZE=2", "LOCAL_RANK=0"},
	 "RANK=99999999999999999999 is not below WORLD_SIZE=2"},
	{{"RANK=1x", "WORLD_SIZE=2", "LOCAL_RANK=0"},
	 "RANK='1x' is not a non-negative decimal integer"},
	{{"RANK=-1", "WORLD_SIZE=2", "LOCAL_RANK=0"},
	 "RANK='-1' is not a non-negative decimal integer"},
	{{"RANK=+1", "WORLD_SIZE=2", "LOCAL_RANK=0"}, "RANK='+1' is not"},
	{{"RANK= 1", "WORLD_SIZE=2", "LOCAL_RANK=0"}, "RANK=' 1' is not"},
	{{"RANK=1", "WORLD_SIZE=2 ", "LOCAL_RANK=0"}, "WORLD_SIZE='2 ' is not"},
	{{"RANK=0", "WORLD_SIZE=0x2", "LOCAL_RANK=0"}, "WORLD_SIZE='0x2' is not"},
	{{"RANK=", "WORLD_SIZE=2", "LOCAL_RANK=0"}, "RANK is set but empty"},
	{{"RANK=0", "WORLD_SIZE=2", "LOCAL_RANK="}, "LOCAL_RANK is set but empty"},
	{{"RANK=0", "WORLD_SIZE=0", "LOCAL_RANK=0"},
	 "WORLD_SIZE=0 is not between 1 and 65536"},
	{{"RANK=0", "WORLD_SIZE=65537", "LOCAL_RANK=0"},
	 "WORLD_SIZE=65537 is not between 1 and 65536"},
	{{"RANK=0", "WORLD_SIZE=18446744073709551617", "LOCAL_RANK=0"},
	 "WORLD_SIZE=18446744073709551617 is not between 1 and 65536"},
	{{"RANK=0"}, "RANK is set but WORLD_SIZE is not"},
	{{"LOCAL_RANK=0", "WORLD_SIZE=1"}, "WORLD_SIZE is set but RANK is not"},
	{{"RANK=0", "WORLD_SIZE=1"}, "WORLD_SIZE is set but LOCAL_RANK is not"},
	{{TORCHRUN_2}, "MASTER_ADDR is not set"},
	{{TORCHRUN_2, "MASTER_ADDR="}, "MASTER_ADDR is set but empty"},
	{{TORCHRUN_2, "MASTER_ADDR=h", "MASTER_PORT=0"},
	 "MASTER_PORT=0 is not between 1 and 65535"},
	{{TORCHRUN_2, "MASTER_ADDR=h", "MASTER_PORT=65536"},
	 "MASTER_PORT=65536 is not between 1 and 65535"},
	{{TORCHRUN_2, "MASTER_ADDR=h", "MASTER_PORT=80a"},
	 "MASTER_PORT='80a' is not a non-negative decimal integer"},
	{{TORCHRUN_2, "MASTER_ADDR=h", "MASTER_PORT="},
	 "MASTER_PORT is set but empty"},
	/* Checked in a single process too. */
	{{"MASTER_PORT=-5"}, "MASTER_PORT='-5' is not"},
	{{"MASTER_ADDR="}, "MASTER_ADDR is set but empty"},
	{{"OMPI_COMM_WORLD_RANK=4", "OMPI_COMM_WORLD_SIZE=4",
	  "OMPI_COMM_WORLD_LOCAL_RANK=0", "MASTER_ADDR=h"},
	 "OMPI_COMM_WORLD_RANK=4 is not below OMPI_COMM_WORLD_SIZE=4"},
	{{"OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=2"},
	 "OMPI_COMM_WORLD_SIZE is set but OMPI_COMM_WORLD_LOCAL_RANK is not"},
	{{"OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=2",
	  "OMPI_COMM_WORLD_LOCAL_RANK=0"},
	 "MASTER_ADDR is not set (needed for a world size of 2): set it to "
	 "rank 0's host, e.g. with mpirun -x MASTER_ADDR=host, when the ranks "
	 "span several hosts"},
	/* Ranks on several hosts: no default. */
	{{OMPI_4, "OMPI_COMM_WORLD_LOCAL_SIZE=2"},
	 "MASTER_ADDR is not set (needed for a world size of 4 with "
	 "OMPI_COMM_WORLD_LOCAL_SIZE=2): set it to rank 0's host, e.g. with "
	 "mpirun -x MASTER_ADDR=host"},
	/* torchrun's variables never get the default. */
	{{TORCHRUN_2, "OMPI_COMM_WORLD_LOCAL_SIZE=2"},
	 "MASTER_ADDR is not set (needed for a world size of 2)"},
	{{TORCHRUN_2, "OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=2",
	  "OMPI_COMM_WORLD_LOCAL_RANK=1", "OMPI_COMM_WORLD_LOCAL_SIZE=2"},
	 "MASTER_ADDR is not set (needed for a world size of 2)"},
	/* Bad local sizes, with MASTER_ADDR given or not. */
	{{OMPI_4, "OMPI_COMM_WORLD_LOCAL_SIZE=2x"},
	 "OMPI_COMM_WORLD_LOCAL_SIZE='2x' is not a non-negative decimal "
	 "integer"},
	{{OMPI_4, "OMPI_COMM_WORLD_LOCAL_SIZE=-4", "MASTER_ADDR=h"},
	 "OMPI_COMM_WORLD_LOCAL_SIZE='-4' is not"},
	{{OMPI_4, "OMPI_COMM_WORLD_LOCAL_SIZE= 4"},
	 "OMPI_COMM_WORLD_LOCAL_SIZE=' 4' is not"},
	{{OMPI_4, "OMPI_COMM_WORLD_LOCAL_SIZE="},
	 "OMPI_COMM_WORLD_LOCAL_SIZE is set but empty"},
	{{OMPI_4, "OMPI_COMM_WORLD_LOCAL_SIZE=0"},
	 "OMPI_COMM_WORLD_LOCAL_SIZE=0 is not between 1 and "
	 "OMPI_COMM_WORLD_SIZE=4"},
	{{OMPI_4, "OMPI_COMM_WORLD_LOCAL_SIZE=5", "MASTER_ADDR=h"},
	 "OMPI_COMM_WORLD_LOCAL_SIZE=5 is not between 1 and "
	 "OMPI_COMM_WORLD_SIZE=4"},
	{{OMPI_4, "OMPI_COMM_WORLD_LOCAL_SIZE=99999999999999999999"},
	 "OMPI_COMM_WORLD_LOCAL_SIZE=99999999999999999999 is not between 1 "
	 "and OMPI_COMM_WORLD_SIZE=4"},
};

static void test_env_errors(void **state)
{
	char long_addr[sizeof "MASTER_ADDR=" + 1000];

	(void)state;
	for (size_t i = 0; i < sizeof bad_envs / sizeof bad_envs[0]; i++) {
		moert_comm_env e, before;
		moert_error err;

		setup(NULL);
		set_env(bad_envs[i].env);
		memset(&e, 0x55, sizeof e);
		memcpy(&before, &e, sizeof e);
		strcpy(err.msg, "(not set)");
		if (moert_comm_env_read(&e, &err) != -1 ||
		    !strstr(err.msg, bad_envs[i].expect))
			fail_msg("case %zu: expected an error with \"%s\", "
				 "got \"%s\"",
				 i, bad_envs[i].expect, err.msg);
		/* Nothing stored on error. */
		assert_memory_equal(&e, &before, sizeof e);
	}

	/* A MASTER_ADDR that does not fit. */
	setup(NULL);
	memset(long_addr, 'a', sizeof long_addr - 1);
	long_addr[sizeof long_addr - 1] = '\0';
	memcpy(long_addr, "MASTER_ADDR=", strlen("MASTER_ADDR="));
	set_env((const char *const[]){long_addr, NULL});
	{
		moert_comm_env e;
		moert_error err;

		assert_int_equal(moert_comm_env_read(&e, &err), -1);
		assert_non_null(strstr(err.msg, "MASTER_ADDR=aaa"));
		assert_non_null(
			strstr(err.msg, "... is 1000 bytes long, more than 255"));
	}
}

/* ---- the exchange -------------------------------------------------------- */

/* Runs a world of `world` processes on loopback, ranks 1.. forked, rank 0
 * this process after `delay_s` (so that the others retry), each reading its
 * place from the environment as a trainer would; checks that every rank
 * received rank 0's len random bytes. */
static void exchange_world(int world, size_t len, double delay_s)
{
	unsigned char *id = malloc(len), *got = malloc(len);
	struct timespec delay = {0, (long)(delay_s * 1e9)};
	pid_t pids[8];
	char port_var[32];
	moert_comm_env e;
	moert_error err;

	assert_non_null(id);
	assert_non_null(got);
	assert_true(world <= 8);
	random_bytes(id, len);
	snprintf(port_var, sizeof port_var, "MASTER_PORT=%d", free_port());
	set_env((const char *const[]){"MASTER_ADDR=127.0.0.1", port_var, NULL});
	snprintf(port_var, sizeof port_var, "WORLD_SIZE=%d", world);
	set_env((const char *const[]){port_var, NULL});

	for (int r = 1; r < world; r++) {
		pids[r] = fork_child();
		if (pids[r] == 0) {
			/* No cmocka asserts in here: report by exit code. */
			char rank[32];
			int code = 0;

			snprintf(rank, sizeof rank, "%d", r);
			setenv("RANK", rank, 1);
			setenv("LOCAL_RANK", rank, 1);
			memset(got, 0, len);
			if (moert_comm_env_read(&e, &err) || e.rank != r)
				code = 2;
			else if (moert_comm_exchange(&e, got, len, 3.0, &err))
				code = 3;
			else if (memcmp(got, id, len) != 0)
				code = 4;
			if (code > 0 && code < 4)
				fprintf(stderr, "rank %d: %s\n", r, err.msg);
			_exit(code);
		}
	}

	setenv("RANK", "0", 1);
	setenv("LOCAL_RANK", "0", 1);
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_int_equal(e.rank, 0);
	assert_int_equal(e.world_size, world);
	nanosleep(&delay, NULL);
	memcpy(got, id, len);
	if (moert_comm_exchange(&e, got, len, 3.0, &err) != 0)
		fail_msg("rank 0: %s", err.msg);
	/* Rank 0's blob is only read. */
	assert_memory_equal(got, id, len);
	for (int r = 1; r < world; r++)
		assert_int_equal(wait_child(pids[r], 4.0), 0);
	free(id);
	free(got);
}

static void test_exchange_four_ranks(void **state)
{
	(void)state;
	exchange_world(4, ID_LEN, 0.3);
}

/* Megabytes: sends and receives that take many calls. */
static void test_exchange_large(void **state)
{
	(void)state;
	exchange_world(3, (size_t)4 << 20, 0.0);
}

/* No socket at all: MASTER_PORT is taken, which would make listening fail. */
static void test_exchange_world_one(void **state)
{
	moert_comm_env e;
	moert_error err;
	unsigned char id[ID_LEN], copy[ID_LEN];
	char port_var[32];
	double t0;
	int port, lfd = listen_loopback(&port);

	(void)state;
	snprintf(port_var, sizeof port_var, "MASTER_PORT=%d", port);
	set_env((const char *const[]){port_var, NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_int_equal(e.world_size, 1);
	assert_int_equal(e.master_port, port);
	random_bytes(id, sizeof id);
	memcpy(copy, id, sizeof id);
	t0 = moert_now();
	assert_int_equal(moert_comm_exchange(&e, id, sizeof id, 5.0, &err), 0);
	assert_true(moert_now() - t0 < 0.05);
	assert_memory_equal(id, copy, sizeof id);
	close(lfd);
}

static void test_exchange_nobody_listens(void **state)
{
	int port = free_port();
	moert_comm_env e = loopback_env(1, 2, port);
	moert_error err;
	unsigned char id[ID_LEN];
	char where[64];
	double t0, dt;

	(void)state;
	t0 = moert_now();
	assert_int_equal(moert_comm_exchange(&e, id, sizeof id, 0.5, &err), -1);
	dt = moert_now() - t0;
	/* It kept trying until the deadline, and not much longer. */
	assert_true(dt >= 0.45);
	assert_true(dt < 1.5);
	snprintf(where, sizeof where, "cannot connect to 127.0.0.1:%d within 0.5 s",
		 port);
	if (!strstr(err.msg, where))
		fail_msg("unexpected message: %s", err.msg);
	assert_non_null(strstr(err.msg, "comm: rank 1:"));
	if (!strstr(err.msg, "(Connection refused)"))
		fail_msg("unexpected message: %s", err.msg);
}

/* Rank 0 waits for ranks that never come. */
static void test_exchange_missing_ranks(void **state)
{
	int port = free_port();
	moert_comm_env e = loopback_env(0, 3, port);
	moert_error err;
	unsigned char id[ID_LEN];
	pid_t pid;
	double t0, dt;

	(void)state;
	random_bytes(id, sizeof id);
	pid = fork_child();
	if (pid == 0) {
		moert_comm_env me = loopback_env(1, 3, port);
		unsigned char got[ID_LEN];

		_exit(moert_comm_exchange(&me, got, sizeof got, 3.0, NULL) == 0 &&
				      memcmp(got, id, sizeof id) == 0
			      ? 0
			      : 1);
	}
	t0 = moert_now();
	assert_int_equal(moert_comm_exchange(&e, id, sizeof id, 0.7, &err), -1);
	dt = moert_now() - t0;
	assert_true(dt >= 0.65 && dt < 2.0);
	if (!strstr(err.msg, "only 1 of the 2 other ranks connected to port"))
		fail_msg("unexpected message: %s", err.msg);
	/* The rank that came got its id all the same. */
	assert_int_equal(wait_child(pid, 4.0), 0);
}

/* A fake rank 0: what it sends, how long it then keeps the connection open,
 * and what the receiving rank must say ("%d": the port). */
static const struct fake_rank0 {
	unsigned char bytes[32];
	size_t n;
	int hold_ms;
	double timeout_s;
	const char *expect;
} fakes[] = {
	{"GARBAGE!\0\0\0\x80", 12, 0, 3.0,
	 "127.0.0.1:%d is not a moert rank 0: received \"GARBAGE!\" instead "
	 "of the magic \"MOERTID1\""},
	{"\x16\x03\x01\"\\\xffZZ\0\0\0\x80", 12, 0, 3.0,
	 "received \"\\x16\\x03\\x01\\x22\\x5c\\xffZZ\" instead"},
	{"MOERTID1\0\0\0\x40", 12, 0, 3.0,
	 "127.0.0.1:%d sends a 64-byte id, expected 128 bytes"},
	{"MOERT", 5, 0, 3.0,
	 "receiving the header from 127.0.0.1:%d: connection closed after 5 "
	 "of 12 bytes"},
	{"MOERTID1\0\0\0\x80"
	 "0123456789",
	 22, 0, 3.0,
	 "receiving the id from 127.0.0.1:%d: connection closed after 10 of "
	 "128 bytes"},
	{"", 0, 1500, 0.5,
	 "receiving the header from 127.0.0.1:%d: timed out after 0.5 s (0 of "
	 "12 bytes)"},
};

/* Child: sends f's bytes to the first connection on lfd, holds it open for
 * f->hold_ms, closes it and exits. */
static void serve_fake(int lfd, const struct fake_rank0 *f)
{
	struct timespec hold = {f->hold_ms / 1000,
				(long)(f->hold_ms % 1000) * 1000 * 1000};
	int fd = accept(lfd, NULL, NULL);

	close(lfd);
	if (fd < 0)
		_exit(10);
	if (f->n && send(fd, f->bytes, f->n, MSG_NOSIGNAL) != (ssize_t)f->n)
		_exit(11);
	nanosleep(&hold, NULL);
	close(fd);
	_exit(0);
}

static void test_exchange_bad_rank0(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof fakes / sizeof fakes[0]; i++) {
		unsigned char id[ID_LEN];
		char expect[256];
		moert_comm_env e;
		moert_error err;
		double t0, dt;
		int port, lfd = listen_loopback(&port);
		pid_t pid = fork_child();

		if (pid == 0)
			serve_fake(lfd, &fakes[i]);
		close(lfd);
		e = loopback_env(1, 2, port);
		t0 = moert_now();
		assert_int_equal(
			moert_comm_exchange(&e, id, sizeof id, fakes[i].timeout_s,
					    &err),
			-1);
		dt = moert_now() - t0;
		snprintf(expect, sizeof expect, fakes[i].expect, port);
		if (!strstr(err.msg, expect))
			fail_msg("case %zu: expected \"%s\" in \"%s\"", i, expect,
				 err.msg);
		/* Failures are reported at once; a silent peer at the
		 * deadline. */
		assert_true(dt < fakes[i].timeout_s + 0.5);
		if (fakes[i].hold_ms)
			assert_true(dt >= fakes[i].timeout_s - 0.05);
		else
			assert_true(dt < 0.5);
		assert_int_equal(wait_child(pid, 3.0), 0);
	}
}

static void test_exchange_bad_arguments(void **state)
{
	moert_comm_env e = loopback_env(1, 2, 1234);
	moert_error err;
	unsigned char id[ID_LEN];

	(void)state;
	assert_int_equal(moert_comm_exchange(&e, id, sizeof id, 0, &err), -1);
	assert_non_null(strstr(err.msg, "timeout 0 s is not positive"));
	assert_int_equal(moert_comm_exchange(&e, id, sizeof id, NAN, &err), -1);
	assert_int_equal(moert_comm_exchange(&e, id, sizeof id, INFINITY, &err),
			 -1);
	assert_non_null(strstr(err.msg, "timeout inf s"));
	assert_int_equal(moert_comm_exchange(&e, NULL, sizeof id, 1, &err), -1);
	assert_non_null(strstr(err.msg, "no buffer for a 128-byte id"));
	e.rank = 2;
	assert_int_equal(moert_comm_exchange(&e, id, sizeof id, 1, &err), -1);
	assert_non_null(strstr(err.msg, "invalid process group (rank 2 of 2"));
	e.rank = 1;
	e.master_addr[0] = '\0';
	assert_int_equal(moert_comm_exchange(&e, id, sizeof id, 1, &err), -1);
	assert_non_null(strstr(err.msg, "no MASTER_ADDR"));
	assert_int_equal(moert_comm_exchange(NULL, id, sizeof id, 1, &err), -1);
}

/* ---- the watched process group ------------------------------------------ */

/* What a rank does once its group is open. */
enum after_open {
	CLOSE, /* sleeps close_s, closes, exits 0 */
	DIE,   /* exits with status 3 at once, without closing */
	HANG,  /* sleeps 10 s without closing, then exits 5 */
};

struct rank_plan {
	enum after_open what;
	double close_s;
};

/* What became of each rank of a world. */
struct world_result {
	int status[8];    /* exit status */
	char text[8][512]; /* its stderr */
	double seconds;    /* from the forks to the last exit */
};

/* Child: rank `rank` of `world`, reading its place from OpenMPI's variables
 * (all ranks on this host, so without MASTER_ADDR), opening the group on
 * port and acting on plan. Exit status: 2 when the environment is wrong, 3
 * when open fails, 4 when the id differs, else per plan. */
static void group_rank(int rank, int world, int port, const unsigned char *id,
		       const struct rank_plan *plan, int err_fd)
{
	unsigned char got[ID_LEN];
	moert_comm_group *g;
	moert_comm_env e;
	moert_error err;
	char v[32];

	if (dup2(err_fd, STDERR_FILENO) < 0)
		_exit(20);
	snprintf(v, sizeof v, "%d", rank);
	setenv("OMPI_COMM_WORLD_RANK", v, 1);
	setenv("OMPI_COMM_WORLD_LOCAL_RANK", v, 1);
	snprintf(v, sizeof v, "%d", world);
	setenv("OMPI_COMM_WORLD_SIZE", v, 1);
	setenv("OMPI_COMM_WORLD_LOCAL_SIZE", v, 1);
	snprintf(v, sizeof v, "%d", port);
	setenv("MASTER_PORT", v, 1);
	if (moert_comm_env_read(&e, &err) || e.rank != rank ||
	    strcmp(e.master_addr, "127.0.0.1") != 0)
		_exit(2);
	if (rank == 0)
		memcpy(got, id, sizeof got);
	else
		memset(got, 0, sizeof got);
	g = moert_comm_group_open(&e, "test", got, sizeof got, 3.0, &err);
	if (!g) {
		fprintf(stderr, "rank %d: %s\n", rank, err.msg);
		_exit(3);
	}
	if (memcmp(got, id, sizeof got) != 0)
		_exit(4);
	if (plan->what == DIE)
		_exit(3);
	if (plan->what == HANG) {
		double end = moert_now() + 10;
		struct timespec tick = {0, 10 * 1000 * 1000};

		while (moert_now() < end)
			nanosleep(&tick, NULL);
		_exit(5);
	}
	{
		struct timespec wait = {(time_t)plan->close_s,
					(long)((plan->close_s -
						(double)(time_t)plan->close_s) *
					       1e9)};

		nanosleep(&wait, NULL);
	}
	moert_comm_group_close(g);
	_exit(0);
}

/* Runs a world of forked ranks on loopback, each with its plan, and waits
 * for all of them (at most 4 s each). */
static void group_world(int world, const struct rank_plan *plans,
			struct world_result *res)
{
	unsigned char id[ID_LEN];
	FILE *files[8];
	pid_t pids[8];
	int port = free_port();
	double t0 = moert_now();

	assert_true(world <= 8);
	random_bytes(id, sizeof id);
	memset(res, 0, sizeof *res);
	for (int r = 0; r < world; r++) {
		files[r] = tmpfile();
		assert_non_null(files[r]);
	}
	for (int r = 0; r < world; r++) {
		pids[r] = fork_child();
		if (pids[r] == 0)
			group_rank(r, world, port, id, &plans[r],
				   fileno(files[r]));
	}
	for (int r = 0; r < world; r++) {
		ssize_t n;

		res->status[r] = wait_child(pids[r], 4.0);
		n = pread(fileno(files[r]), res->text[r],
			  sizeof res->text[r] - 1, 0);
		assert_true(n >= 0);
		res->text[r][n] = '\0';
		fclose(files[r]);
	}
	res->seconds = moert_now() - t0;
}

/* The watcher's line: rank `rank` saw rank `peer` end. */
static void failure_line(char *buf, size_t size, int rank, int peer)
{
	snprintf(buf, size,
		 "test: rank %d: rank %d ended without finishing (crashed, "
		 "killed, or stopped on an error); stopping this rank too\n",
		 rank, peer);
}

/* Every rank opens (by OpenMPI's variables, without MASTER_ADDR), gets the
 * id and closes; the last ones go on after the first closed. */
static void test_group_all_close(void **state)
{
	struct rank_plan plans[4];
	struct world_result res;

	(void)state;
	for (int r = 0; r < 4; r++)
		plans[r] = (struct rank_plan){CLOSE, 0.1 * (3 - r)};
	group_world(4, plans, &res);
	for (int r = 0; r < 4; r++) {
		if (res.status[r] != 0 || res.text[r][0])
			fail_msg("rank %d: status %d, stderr \"%s\"", r,
				 res.status[r], res.text[r]);
	}
}

/* A rank that dies stops the others: rank 2 (watched by rank 0, which
 * rank 1 then sees end), then rank 0 itself. */
static void test_group_peer_dies(void **state)
{
	const struct rank_plan rank2_dies[3] = {{HANG, 0}, {HANG, 0}, {DIE, 0}};
	const struct rank_plan rank0_dies[3] = {{DIE, 0}, {HANG, 0}, {HANG, 0}};
	struct world_result res;
	char line[256], other[256];

	(void)state;
	group_world(3, rank2_dies, &res);
	for (int r = 0; r < 3; r++)
		if (res.status[r] != (r == 2 ? 3 : 1))
			fail_msg("rank %d: status %d, stderr \"%s\"", r,
				 res.status[r], res.text[r]);
	if (res.seconds >= 2.0)
		fail_msg("the ranks took %.2f s to stop", res.seconds);
	failure_line(line, sizeof line, 0, 2);
	assert_string_equal(res.text[0], line);
	/* Rank 1 may see rank 0 stop first, or (were it watching rank 2)
	 * rank 2. */
	failure_line(line, sizeof line, 1, 0);
	failure_line(other, sizeof other, 1, 2);
	if (strcmp(res.text[1], line) != 0 && strcmp(res.text[1], other) != 0)
		fail_msg("rank 1 said \"%s\"", res.text[1]);
	assert_string_equal(res.text[2], "");

	alarm(TEST_ALARM_S);
	group_world(3, rank0_dies, &res);
	assert_int_equal(res.status[0], 3);
	assert_string_equal(res.text[0], "");
	for (int r = 1; r < 3; r++) {
		assert_int_equal(res.status[r], 1);
		failure_line(line, sizeof line, r, 0);
		assert_string_equal(res.text[r], line);
	}
	if (res.seconds >= 2.0)
		fail_msg("the ranks took %.2f s to stop", res.seconds);
}

/* Rank 0's orderly close is no failure for the ranks that go on. */
static void test_group_rank0_closes_first(void **state)
{
	const struct rank_plan plans[3] = {{CLOSE, 0}, {CLOSE, 0.5},
					   {CLOSE, 0.5}};
	struct world_result res;

	(void)state;
	group_world(3, plans, &res);
	for (int r = 0; r < 3; r++) {
		if (res.status[r] != 0 || res.text[r][0])
			fail_msg("rank %d: status %d, stderr \"%s\"", r,
				 res.status[r], res.text[r]);
	}
	assert_true(res.seconds >= 0.5);
}

/* Entries of a /proc/self directory (threads, descriptors). */
static int count_entries(const char *dir)
{
	char cmd[64];
	FILE *f;
	int n = -1;

	snprintf(cmd, sizeof cmd, "ls -A %s | wc -l", dir);
	f = popen(cmd, "r");
	assert_non_null(f);
	assert_int_equal(fscanf(f, "%d", &n), 1);
	pclose(f);
	return n;
}

/* A world of 1: no socket (MASTER_PORT is taken), no thread. */
static void test_group_world_one(void **state)
{
	moert_comm_group *g;
	moert_comm_env e;
	moert_error err;
	unsigned char id[ID_LEN], copy[ID_LEN];
	char port_var[32];
	int port, lfd = listen_loopback(&port);
	int fds, threads;
	double t0;

	(void)state;
	snprintf(port_var, sizeof port_var, "MASTER_PORT=%d", port);
	set_env((const char *const[]){port_var, NULL});
	assert_int_equal(moert_comm_env_read(&e, &err), 0);
	assert_int_equal(e.world_size, 1);
	random_bytes(id, sizeof id);
	memcpy(copy, id, sizeof id);
	fds = count_entries("/proc/self/fd");
	threads = count_entries("/proc/self/task");
	t0 = moert_now();
	g = moert_comm_group_open(&e, NULL, id, sizeof id, 5.0, &err);
	assert_non_null(g);
	assert_true(moert_now() - t0 < 0.05);
	assert_memory_equal(id, copy, sizeof id);
	/* popen's own descriptors are gone by the time it counts. */
	assert_int_equal(count_entries("/proc/self/fd"), fds);
	assert_int_equal(count_entries("/proc/self/task"), threads);
	moert_comm_group_close(g);
	moert_comm_group_close(NULL);
	close(lfd);
}

/* A rank calling moert_comm_exchange against a rank 0 in
 * moert_comm_group_open: both fail, saying why. */
static void test_group_mismatch(void **state)
{
	int port = free_port();
	moert_comm_env e = loopback_env(1, 2, port);
	moert_error err;
	unsigned char id[ID_LEN];
	char expect[128];
	FILE *f = tmpfile();
	pid_t pid;
	ssize_t n;

	(void)state;
	assert_non_null(f);
	random_bytes(id, sizeof id);
	pid = fork_child();
	if (pid == 0) {
		moert_comm_env me = loopback_env(0, 2, port);
		moert_comm_group *g;

		dup2(fileno(f), STDERR_FILENO);
		g = moert_comm_group_open(&me, "test", id, sizeof id, 3.0,
					  &err);
		if (g)
			_exit(0);
		fprintf(stderr, "%s", err.msg);
		_exit(3);
	}
	assert_int_equal(moert_comm_exchange(&e, id, sizeof id, 3.0, &err), -1);
	snprintf(expect, sizeof expect,
		 "rank 0 at 127.0.0.1:%d called moert_comm_group_open, this "
		 "rank moert_comm_exchange",
		 port);
	if (!strstr(err.msg, expect))
		fail_msg("unexpected message: %s", err.msg);
	assert_int_equal(wait_child(pid, 4.0), 3);
	n = pread(fileno(f), err.msg, sizeof err.msg - 1, 0);
	assert_true(n > 0);
	err.msg[n] = '\0';
	/* Closed, or reset: rank 1 leaves the id unread. */
	if (!strstr(err.msg, "comm: rank 0: receiving the rank of ") ||
	    !strstr(err.msg, "after 0 of 8 bytes"))
		fail_msg("unexpected message from rank 0: %s", err.msg);
	fclose(f);
}

static void test_group_bad_arguments(void **state)
{
	moert_comm_env e = loopback_env(1, 2, 1234);
	moert_error err;
	unsigned char id[ID_LEN];

	(void)state;
	assert_null(moert_comm_group_open(&e, "t", id, sizeof id, 0, &err));
	assert_non_null(strstr(err.msg, "timeout 0 s is not positive"));
	assert_null(moert_comm_group_open(&e, "t", NULL, sizeof id, 1, &err));
	assert_non_null(strstr(err.msg, "no buffer for a 128-byte id"));
	assert_null(moert_comm_group_open(NULL, "t", id, sizeof id, 1, &err));
	assert_non_null(strstr(err.msg, "invalid process group"));
	e.master_addr[0] = '\0';
	assert_null(moert_comm_group_open(&e, "t", id, sizeof id, 1, NULL));
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_env_single),
		T(test_env_torchrun),
		T(test_env_openmpi),
		T(test_env_openmpi_one_host),
		T(test_env_errors),
		T(test_exchange_world_one),
		T(test_exchange_four_ranks),
		T(test_exchange_large),
		T(test_exchange_nobody_listens),
		T(test_exchange_missing_ranks),
		T(test_exchange_bad_rank0),
		T(test_exchange_bad_arguments),
		T(test_group_all_close),
		T(test_group_peer_dies),
		T(test_group_rank0_closes_first),
		T(test_group_world_one),
		T(test_group_mismatch),
		T(test_group_bad_arguments),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
