## runtime/comm.mk: libmoert's process-group bootstrap (ranks from the
## torchrun or OpenMPI environment, rank 0's NCCL id handed to every rank over
## TCP; no NCCL or MPI needed) and its unit test. Included by the top-level
## Makefile.am.

libmoert_la_SOURCES += runtime/comm_bootstrap.c
include_HEADERS += runtime/moert_comm.h

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_comm
TESTS += tests/unit/test_comm
tests_unit_test_comm_SOURCES = tests/unit/test_comm.c
tests_unit_test_comm_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_comm_LDADD = libmoert.la $(CMOCKA_LIBS)
endif

# one rank of a process group, for tests/e2e/multihost.sh (hosts in network
# namespaces)
check_PROGRAMS += tests/tools/comm_peer
TESTS += tests/e2e/multihost.sh
EXTRA_DIST += tests/e2e/multihost.sh
tests_tools_comm_peer_SOURCES = tests/tools/comm_peer.c
tests_tools_comm_peer_LDADD = libmoert.la
