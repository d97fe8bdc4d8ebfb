/* moert_comm.h: the process-group bootstrap of libmoert's multi-GPU trainers:
 * one process per GPU, launched by torchrun (or any launcher that sets its
 * variables) or by OpenMPI's mpirun, finds its rank from the environment, and
 * rank 0 hands every other rank a small blob (NCCL's 128-byte unique id) over
 * TCP. Nothing here needs NCCL or MPI.
 *
 * Conventions: those of moert_core.h. Functions that can fail take a
 * `moert_error *err` (which may be NULL) and return -1 with a one-line
 * message in err->msg, or 0.
 *
 * Wire format, rank 0 to each other rank on one TCP connection: the 8 bytes
 * "MOERTID1", the blob's length as 4 bytes big-endian, then the blob. Rank 0
 * closes the connection after it; the other ranks send nothing.
 */
#ifndef MOERT_COMM_H
#define MOERT_COMM_H

#include <stddef.h>

#include "moert_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* MASTER_PORT when the variable is unset (as torchrun). */
#define MOERT_COMM_DEFAULT_PORT 29500
/* The largest world size accepted. */
#define MOERT_COMM_MAX_WORLD 65536
/* Size of moert_comm_env.master_addr: a host name (at most 253 bytes) or
 * a numeric address, and its NUL. */
#define MOERT_COMM_ADDR_MAX 256

typedef struct moert_comm_env {
	int rank;       /* 0 .. world_size - 1 */
	int world_size; /* 1 .. MOERT_COMM_MAX_WORLD */
	int local_rank; /* rank among the processes of this host: its GPU */
	/* MASTER_ADDR: where rank 0 listens; "" when unset (world size 1). */
	char master_addr[MOERT_COMM_ADDR_MAX];
	int master_port; /* MASTER_PORT: 1 .. 65535 */
	/* Where the ranks came from: "torchrun" (RANK, WORLD_SIZE,
	 * LOCAL_RANK), "openmpi" (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK)
	 * or "single" (none of them set: rank 0 of 1). A static string. */
	const char *launcher;
} moert_comm_env;

/* Reads the process group from the environment:
 * - RANK, WORLD_SIZE and LOCAL_RANK when any of them is set (then all three
 *   must be);
 * - otherwise OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE and
 *   OMPI_COMM_WORLD_LOCAL_RANK under the same rule;
 * - otherwise a single process: rank 0 of 1, local rank 0;
 * - MASTER_ADDR, required when the world size is above 1, and MASTER_PORT
 *   (default MOERT_COMM_DEFAULT_PORT), from those names in every case (give
 *   them to mpirun with -x).
 * Values must be plain decimal digits (no sign, no spaces), the world size
 * 1 .. MOERT_COMM_MAX_WORLD, the rank and local rank below the world size, the
 * port 1 .. 65535. A variable that is set but empty is an error. Messages name
 * the variable and its value ("RANK=3 is not below WORLD_SIZE=2"). On failure
 * *e is left as it was. */
int moert_comm_env_read(moert_comm_env *e, moert_error *err);

/* Hands rank 0's blob[0..len) to every other rank: rank 0 listens on
 * e->master_port on all interfaces, accepts world_size - 1 connections and
 * sends each the blob; any other rank connects to e->master_addr:master_port
 * (retrying every 100 ms, since rank 0 may start later) and receives exactly
 * len bytes into blob, checking the magic and the length first. Every rank
 * must pass the same len (at most 2^32 - 1). The whole exchange, retries
 * included, must end within timeout_s seconds (positive, finite) of the call,
 * or it fails; the one step that the timeout cannot cut short is resolving
 * MASTER_ADDR (getaddrinfo), when DNS is slow. A peer that closes early or
 * sends anything else is an error that names it. With a world size of 1 it
 * returns 0 at once without a socket. On failure blob may hold part of what
 * was received. Sockets are closed on every path. */
int moert_comm_exchange(const moert_comm_env *e, void *blob, size_t len,
			double timeout_s, moert_error *err);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_COMM_H */
