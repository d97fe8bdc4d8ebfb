## tests/tests.mk
## NOTE: accidentally overwritten at 05:46:48 UTC by the build-system helper (a test
## script meant for a scratch copy ran in /work/main). The content before that is
## lost; the owner must restore it.
