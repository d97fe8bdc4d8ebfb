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
 * "MOERTID1" (moert_comm_exchange) or "MOERTGR1" (moert_comm_group_open),
 * the blob's length as 4 bytes big-endian, then the blob. With
 * moert_comm_exchange rank 0 then closes the connection, and the other ranks
 * send nothing. With moert_comm_group_open the other rank answers with its
 * rank and world size (4 bytes big-endian each) and both keep the connection
 * open; the only byte sent on it afterwards is 'B' ("bye"), which either end
 * sends in moert_comm_group_close.
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
	/* MASTER_ADDR: where rank 0 listens; "127.0.0.1" when unset under
	 * OpenMPI with every rank on this host (moert_comm_env_read); ""
	 * when unset with a world size of 1. */
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
 *   them to mpirun with -x);
 * - except that with OpenMPI's variables, a world size above 1, MASTER_ADDR
 *   unset and OMPI_COMM_WORLD_LOCAL_SIZE equal to the world size (every rank
 *   on this host, as `mpirun -np 2 ./train` on one machine), MASTER_ADDR
 *   defaults to "127.0.0.1". When the ranks span several hosts
 *   (OMPI_COMM_WORLD_LOCAL_SIZE below the world size, or unset), or with
 *   torchrun's variables, MASTER_ADDR stays required (mpirun -x
 *   MASTER_ADDR=host).
 * Values must be plain decimal digits (no sign, no spaces), the world size
 * 1 .. MOERT_COMM_MAX_WORLD, the rank and local rank below the world size,
 * OMPI_COMM_WORLD_LOCAL_SIZE (checked whenever OpenMPI's variables are used
 * and it is set) 1 .. the world size, the port 1 .. 65535. A variable that is
 * set but empty is an error. Messages name the variable and its value
 * ("RANK=3 is not below WORLD_SIZE=2"). On failure *e is left as it was. */
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

/* A process group that notices when a peer dies, so that no rank waits
 * forever (in an NCCL collective, say) for a process that is gone. */
typedef struct moert_comm_group moert_comm_group;

/* The exchange of moert_comm_exchange (same arguments, same checks and
 * deadline), with the connections kept open afterwards: rank 0 keeps one to
 * every other rank, each other rank its one to rank 0 (rank 0's listening
 * socket is closed). A thread then watches them. When a peer's connection
 * ends without that peer having called moert_comm_group_close (it crashed,
 * was killed, exited on an error, or exited without closing the group), the
 * watcher writes one line to stderr,
 *   "<prefix>: rank R: rank Q ended without finishing (crashed, killed, or
 *   stopped on an error); stopping this rank too"
 * and ends the process with _exit(1) (no atexit handlers, status 1). Rank 0
 * watches every rank and every rank watches rank 0, so one failure stops all
 * ranks within two hops. When rank 0's open fails after some ranks returned
 * from theirs, those ranks stop the same way. The sockets are close-on-exec;
 * the thread blocks every signal. A child forked after open holds copies of
 * the sockets, so a peer would not see this rank end while the child lives.
 * With a world size of 1: no socket, no thread; returns a group at once.
 * prefix: the program name for the message (copied), e.g. "train"; NULL or
 * "" gives "moert". Returns NULL with err set on failure (every socket
 * closed). */
moert_comm_group *moert_comm_group_open(const moert_comm_env *e,
					const char *prefix, void *blob,
					size_t len, double timeout_s,
					moert_error *err);

/* Orderly end of this rank: stops the watcher thread (joined), sends the bye
 * byte 'B' on each connection whose peer has not closed yet, closes the
 * sockets and frees g. A peer that receives the bye byte then sees the
 * connection end does not treat it as a failure, so after a rank's close
 * (rank 0's included) its peers go on normally; every rank must call it
 * before exiting. Call it once, from one thread. NULL-safe. */
void moert_comm_group_close(moert_comm_group *g);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_COMM_H */
