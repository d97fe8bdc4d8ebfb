/* comm_peer: one rank of libmoert's process group, for tests/e2e/multihost.sh.
 *
 *   comm_peer [die]
 *
 * Reads the rank from the environment as a trainer does (moert_comm_env_read:
 * RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), opens the watched
 * group (moert_comm_group_open) with a 128-byte blob that rank 0 fills (the
 * size of NCCL's unique id), checks the blob on every rank and prints
 *   "rank R of W (launcher L, master A:P): blob ok"
 * With "die", rank 1 then exits with status 3 without closing the group, as
 * a crashed rank would; the others wait for the watcher to stop them
 * (status 1, its message on stderr). Otherwise every rank closes the group
 * and exits 0. A wrong blob or a failed open exits 2 with the reason. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moert_comm.h"

int main(int argc, char **argv)
{
	const int die = argc > 1 && strcmp(argv[1], "die") == 0;
	moert_comm_env env;
	moert_error err;
	if (moert_comm_env_read(&env, &err) != 0) {
		fprintf(stderr, "comm_peer: %s\n", err.msg);
		return 2;
	}
	unsigned char blob[128];
	memset(blob, 0, sizeof blob);
	if (env.rank == 0)
		for (size_t i = 0; i < sizeof blob; i++)
			blob[i] = (unsigned char)(i * 37 + 11);
	moert_comm_group *g = moert_comm_group_open(&env, "comm_peer", blob, sizeof blob, 30.0, &err);
	if (!g) {
		fprintf(stderr, "comm_peer: rank %d: %s\n", env.rank, err.msg);
		return 2;
	}
	for (size_t i = 0; i < sizeof blob; i++)
		if (blob[i] != (unsigned char)(i * 37 + 11)) {
			fprintf(stderr, "comm_peer: rank %d: byte %zu of the blob is %u, not %u\n", env.rank, i,
				blob[i], (unsigned)(unsigned char)(i * 37 + 11));
			return 2;
		}
	printf("rank %d of %d (launcher %s, master %s:%d): blob ok\n", env.rank, env.world_size, env.launcher,
	       env.master_addr, env.master_port);
	fflush(stdout);
	if (die) {
		if (env.rank == 1)
			_exit(3); /* no moert_comm_group_close: a crash, to the others */
		for (int s = 0; s < 60; s++)
			sleep(1); /* the watcher ends this process */
		fprintf(stderr, "comm_peer: rank %d: still running 60 s after rank 1 died\n", env.rank);
		return 2;
	}
	moert_comm_group_close(g);
	return 0;
}
