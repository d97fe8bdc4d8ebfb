# moecc.m4: moecc's own configure checks (tools, libraries, test helpers).
#                                                             -*- Autoconf -*-
# cuda.m4 and nccl.m4 hold the GPU checks.


# MOECC_PROG_BISON(SHIPPED-PARSER)
# --------------------------------
# Look for GNU bison >= 3.0 (the grammar uses %define api.pure, locations and
# other bison-only features, so a POSIX yacc will not do). Substitutes BISON
# and YACC for automake's .y rule.
#
# Automake's rule runs `ylwrap FILE.y y.tab.c FILE.c y.tab.h FILE.h -- $(YACC)
# ...' in a temporary directory and expects y.tab.c and y.tab.h there. We set
# YACC='$(BISON) -o y.tab.c' (the header follows as y.tab.h), not "bison -y":
# -y turns on POSIX Yacc warnings (-Wyacc) that fail a -Werror build of a
# grammar using %define, and it is deprecated since bison 3.8. This works
# with automake 1.16's ylwrap. (AC_PROG_YACC is not used.)
#
# A tarball from `make dist' ships SHIPPED-PARSER (e.g. dsl/parser.c); then a
# missing or old bison is only a warning, and BISON becomes automake's
# `missing bison', which explains itself if the parser ever needs remaking.
# Without it (a git checkout), bison is required.
# Leaves moecc_bison_summary.
AC_DEFUN([MOECC_PROG_BISON], [
AC_ARG_VAR([BISON], [GNU bison >= 3.0, to generate the parser])
AC_PATH_PROGS([BISON], [bison])
moecc_bison_version=
AS_IF([test -n "$BISON"], [
  AC_MSG_CHECKING([whether $BISON is GNU bison >= 3.0])
  moecc_bison_version=`$BISON --version 2>/dev/null | sed -n '1s/^.*(GNU Bison) \(@<:@0-9@:>@@<:@0-9.@:>@*\).*$/\1/p'`
  AS_IF([test -z "$moecc_bison_version"],
    [AC_MSG_RESULT([no (not GNU bison)])],
    [AS_VERSION_COMPARE([$moecc_bison_version], [3.0],
      [AC_MSG_RESULT([no (version $moecc_bison_version)]); moecc_bison_version=],
      [AC_MSG_RESULT([yes ($moecc_bison_version)])],
      [AC_MSG_RESULT([yes ($moecc_bison_version)])])])
])
AS_IF([test -n "$moecc_bison_version"], [
  moecc_bison_summary="bison $moecc_bison_version"
], [test -f "$srcdir/$1"], [
  AC_MSG_WARN([GNU bison >= 3.0 not found; using the shipped $1 (bison is needed only if you change its grammar)])
  BISON="${am_missing_run}bison"
  moecc_bison_summary="no bison (shipped $1)"
], [
  AC_MSG_ERROR([GNU bison >= 3.0 is required to build from a source checkout ($1 is not there yet): install it (Debian: apt-get install bison) or set BISON=/path/to/bison])
])
YACC='$(BISON) -o y.tab.c'
AC_SUBST([BISON])
AC_SUBST([YACC])
])


# MOECC_PROG_FLEX(SHIPPED-LEXER)
# ------------------------------
# AC_PROG_LEX([noyywrap]) must have run before. Checks that LEX is flex
# >= 2.5.35 (reentrant scanners, bison-bridge). As for bison, a tarball that
# ships SHIPPED-LEXER does not need flex. Leaves moecc_flex_summary.
AC_DEFUN([MOECC_PROG_FLEX], [
moecc_flex_version=
AS_IF([test "x$LEX" != "x:" && test -n "$LEX"], [
  AC_MSG_CHECKING([whether $LEX is flex >= 2.5.35])
  moecc_flex_version=`$LEX --version 2>/dev/null | sed -n '1s/^@<:@^ @:>@*lex @<:@^0-9@:>@*\(@<:@0-9@:>@@<:@0-9.@:>@*\).*$/\1/p'`
  AS_IF([test -z "$moecc_flex_version"],
    [AC_MSG_RESULT([no (not flex)])],
    [AS_VERSION_COMPARE([$moecc_flex_version], [2.5.35],
      [AC_MSG_RESULT([no (version $moecc_flex_version)]); moecc_flex_version=],
      [AC_MSG_RESULT([yes ($moecc_flex_version)])],
      [AC_MSG_RESULT([yes ($moecc_flex_version)])])])
])
AS_IF([test -n "$moecc_flex_version"], [
  moecc_flex_summary="flex $moecc_flex_version"
], [test -f "$srcdir/$1"], [
  AC_MSG_WARN([flex >= 2.5.35 not found; using the shipped $1 (flex is needed only if you change the lexer)])
  LEX="${am_missing_run}flex"
  test -n "$LEX_OUTPUT_ROOT" || LEX_OUTPUT_ROOT=lex.yy
  moecc_flex_summary="no flex (shipped $1)"
], [
  AC_MSG_ERROR([flex >= 2.5.35 is required to build from a source checkout ($1 is not there yet): install it (Debian: apt-get install flex) or set LEX=/path/to/flex])
])
])


# MOECC_CHECK_PTHREAD
# -------------------
# Substitutes PTHREAD_CFLAGS and PTHREAD_LIBS (-pthread, or -lpthread).
AC_DEFUN([MOECC_CHECK_PTHREAD], [
AC_MSG_CHECKING([how to build with POSIX threads])
moecc_save_CFLAGS=$CFLAGS
moecc_save_LIBS=$LIBS
PTHREAD_CFLAGS=
PTHREAD_LIBS=
for moecc_pt in "-pthread -pthread" "none -lpthread" "none none"; do
  set dummy $moecc_pt
  moecc_pt_cflags=$[2]; moecc_pt_libs=$[3]
  test "x$moecc_pt_cflags" = xnone && moecc_pt_cflags=
  test "x$moecc_pt_libs" = xnone && moecc_pt_libs=
  CFLAGS="$moecc_save_CFLAGS $moecc_pt_cflags"
  LIBS="$moecc_pt_libs $moecc_save_LIBS"
  AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <pthread.h>
static void *moecc_thread(void *p) { return p; }]],
      [[pthread_t t;
        if (pthread_create(&t, 0, moecc_thread, 0) != 0) return 1;
        return pthread_join(t, 0);]])],
    [moecc_pt_ok=yes], [moecc_pt_ok=no])
  AS_IF([test "x$moecc_pt_ok" = xyes], [
    PTHREAD_CFLAGS=$moecc_pt_cflags
    PTHREAD_LIBS=$moecc_pt_libs
    break])
done
CFLAGS=$moecc_save_CFLAGS
LIBS=$moecc_save_LIBS
AS_IF([test "x$moecc_pt_ok" = xyes],
  [AS_IF([test "x$PTHREAD_CFLAGS" = "x$PTHREAD_LIBS"],
     [AC_MSG_RESULT([${PTHREAD_CFLAGS:-nothing needed}])],
     [AC_MSG_RESULT([CFLAGS ${PTHREAD_CFLAGS:-(none)}, LIBS ${PTHREAD_LIBS:-(none)}])])],
  [AC_MSG_RESULT([none works])
   AC_MSG_ERROR([POSIX threads are required (the runtime prefetches data in the background)])])
AC_SUBST([PTHREAD_CFLAGS])
AC_SUBST([PTHREAD_LIBS])
])


# MOECC_CHECK_BLAS
# ----------------
# --with-blas=auto|no|MODULE: a BLAS with cblas_sgemm for the CPU backend,
# found through pkg-config (openblas, cblas, blas in that order for "auto"),
# then by plain -lopenblas / -lcblas / -lblas. Optional unless a module is
# named. Substitutes BLAS_CFLAGS, BLAS_LIBS; AM_CONDITIONAL([HAVE_BLAS]);
# defines HAVE_CBLAS. Leaves moecc_blas (what was found, or "no").
AC_DEFUN([MOECC_CHECK_BLAS], [
AC_REQUIRE([PKG_PROG_PKG_CONFIG])
AC_ARG_WITH([blas],
  [AS_HELP_STRING([--with-blas=MODULE],
    [BLAS with cblas_sgemm for the CPU backend: a pkg-config module
     (openblas, cblas, blas), "no", or "auto" to try those (default: auto)])],
  [], [with_blas=auto])
AC_ARG_VAR([BLAS_CFLAGS], [C compiler flags for BLAS, overriding pkg-config])
AC_ARG_VAR([BLAS_LIBS], [linker flags for BLAS, overriding pkg-config])
moecc_blas=no
AS_CASE([$with_blas],
  [no],       [moecc_blas_try=],
  [auto|yes], [moecc_blas_try="openblas cblas blas"],
              [moecc_blas_try=$with_blas])
m4_pushdef([moecc_cblas_program],
  [AC_LANG_PROGRAM([[#include <cblas.h>]],
    [[float a = 1.0f, b = 2.0f, c = 0.0f;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, 1, 1,
                  1.0f, &a, 1, &b, 1, 0.0f, &c, 1);
      return c == 2.0f ? 0 : 1;]])])
moecc_save_CPPFLAGS=$CPPFLAGS
moecc_save_LIBS=$LIBS
AS_IF([test -n "$moecc_blas_try" && test -n "$BLAS_LIBS"], [
  # Given by the user.
  AC_MSG_CHECKING([for cblas_sgemm with BLAS_CFLAGS and BLAS_LIBS])
  CPPFLAGS="$BLAS_CFLAGS $moecc_save_CPPFLAGS"
  LIBS="$BLAS_LIBS $moecc_save_LIBS"
  AC_LINK_IFELSE([moecc_cblas_program],
    [AC_MSG_RESULT([yes]); moecc_blas="$BLAS_LIBS"],
    [AC_MSG_RESULT([no])
     AC_MSG_ERROR([BLAS_LIBS="$BLAS_LIBS" does not provide cblas_sgemm (see config.log)])])
], [
  for moecc_blas_mod in $moecc_blas_try; do
    AC_MSG_CHECKING([for cblas_sgemm in pkg-config module $moecc_blas_mod])
    AS_IF([test -n "$PKG_CONFIG" && $PKG_CONFIG --exists "$moecc_blas_mod" 2>/dev/null], [
      moecc_blas_cflags=`$PKG_CONFIG --cflags "$moecc_blas_mod"`
      moecc_blas_libs=`$PKG_CONFIG --libs "$moecc_blas_mod"`
      CPPFLAGS="$moecc_blas_cflags $moecc_save_CPPFLAGS"
      LIBS="$moecc_blas_libs $moecc_save_LIBS"
      AC_LINK_IFELSE([moecc_cblas_program],
        [AC_MSG_RESULT([yes])
         BLAS_CFLAGS=$moecc_blas_cflags
         BLAS_LIBS=$moecc_blas_libs
         moecc_blas=$moecc_blas_mod],
        [AC_MSG_RESULT([no])])
    ], [AC_MSG_RESULT([no ($moecc_blas_mod.pc not found)])])
    test "x$moecc_blas" != xno && break
  done
  # Without pkg-config files: the plain libraries.
  AS_IF([test "x$moecc_blas" = xno && test "x$with_blas" = xauto], [
    for moecc_blas_lib in openblas cblas blas; do
      AC_MSG_CHECKING([for cblas_sgemm in -l$moecc_blas_lib])
      CPPFLAGS=$moecc_save_CPPFLAGS
      LIBS="-l$moecc_blas_lib $moecc_save_LIBS"
      AC_LINK_IFELSE([moecc_cblas_program],
        [AC_MSG_RESULT([yes])
         BLAS_CFLAGS=
         BLAS_LIBS=-l$moecc_blas_lib
         moecc_blas="-l$moecc_blas_lib"],
        [AC_MSG_RESULT([no])])
      test "x$moecc_blas" != xno && break
    done
  ])
])
CPPFLAGS=$moecc_save_CPPFLAGS
LIBS=$moecc_save_LIBS
m4_popdef([moecc_cblas_program])
AS_IF([test "x$moecc_blas" = xno], [
  BLAS_CFLAGS=
  BLAS_LIBS=
  AS_CASE([$with_blas],
    [no|auto], [],
    [AC_MSG_ERROR([--with-blas=$with_blas: no cblas_sgemm found (see config.log)])])
], [
  AC_DEFINE([HAVE_CBLAS], [1], [Define to 1 if a CBLAS (cblas.h, cblas_sgemm) is usable.])
])
AC_SUBST([BLAS_CFLAGS])
AC_SUBST([BLAS_LIBS])
AM_CONDITIONAL([HAVE_BLAS], [test "x$moecc_blas" != xno])
])


# MOECC_CHECK_PYTORCH
# -------------------
# A python3 that can `import torch', for the tests that cross-check against
# PyTorch: PYTHON_TORCH if the user set it ("no" skips the tests), else
# /usr/bin/python3, else python3 on PATH. Substitutes PYTHON_TORCH (empty
# when none) and TORCH_VERSION. Leaves moecc_torch_summary.
AC_DEFUN([MOECC_CHECK_PYTORCH], [
AC_ARG_VAR([PYTHON_TORCH],
  [python3 that can import torch, for the PyTorch cross-check tests
   ("no" to skip them; default: /usr/bin/python3, then python3 on PATH)])
TORCH_VERSION=
moecc_torch_summary=no
AS_IF([test "x$PYTHON_TORCH" = xno], [
  PYTHON_TORCH=
  moecc_torch_summary="no (PYTHON_TORCH=no)"
], [
  AS_IF([test -n "$PYTHON_TORCH"],
    [moecc_torch_user=yes; moecc_torch_try=$PYTHON_TORCH],
    [moecc_torch_user=no
     moecc_torch_try=/usr/bin/python3
     moecc_torch_path=`command -v python3 2>/dev/null`
     AS_IF([test -n "$moecc_torch_path" && test "x$moecc_torch_path" != x/usr/bin/python3],
       [moecc_torch_try="$moecc_torch_try $moecc_torch_path"])])
  PYTHON_TORCH=
  for moecc_py in $moecc_torch_try; do
    AC_MSG_CHECKING([whether $moecc_py can import torch])
    moecc_torch_v=`$moecc_py -c 'import torch; print(torch.__version__)' 2>&AS_MESSAGE_LOG_FD | tail -n 1`
    AS_IF([test -n "$moecc_torch_v"], [
      AC_MSG_RESULT([yes (torch $moecc_torch_v)])
      PYTHON_TORCH=$moecc_py
      TORCH_VERSION=$moecc_torch_v
      moecc_torch_summary="$PYTHON_TORCH (torch $TORCH_VERSION)"
      break
    ], [AC_MSG_RESULT([no])])
  done
  AS_IF([test -z "$PYTHON_TORCH" && test "x$moecc_torch_user" = xyes],
    [AC_MSG_ERROR([PYTHON_TORCH=$moecc_torch_try cannot import torch (see config.log); set PYTHON_TORCH=no to skip the PyTorch tests])])
  AS_IF([test -z "$PYTHON_TORCH"],
    [moecc_torch_summary="no (the PyTorch cross-check tests will be skipped)"])
])
AC_SUBST([PYTHON_TORCH])
AC_SUBST([TORCH_VERSION])
])


# MOECC_CHECK_MPI
# ---------------
# --with-mpi=auto|yes|no. Detection only, for launching multi-GPU trainers
# with mpirun: `mpicc' on PATH and/or Open MPI's pkg-config module ompi-c.
# Substitutes MPICC, MPI_CFLAGS, MPI_LIBS; AM_CONDITIONAL([HAVE_MPI]).
# Leaves moecc_mpi_summary.
AC_DEFUN([MOECC_CHECK_MPI], [
AC_REQUIRE([PKG_PROG_PKG_CONFIG])
AC_ARG_WITH([mpi],
  [AS_HELP_STRING([--with-mpi@<:@=yes|no@:>@],
    [look for MPI (mpicc, or Open MPI's ompi-c pkg-config module), used to
     bootstrap multi-GPU trainers (default: look, optional)])],
  [], [with_mpi=auto])
AC_ARG_VAR([MPICC], [MPI C compiler wrapper])
moecc_have_mpi=no
moecc_mpi_summary=no
AS_IF([test "x$with_mpi" != xno], [
  AC_PATH_PROGS([MPICC], [mpicc])
  PKG_CHECK_MODULES([MPI], [ompi-c], [moecc_ompi=yes], [moecc_ompi=no])
  AS_IF([test "x$moecc_ompi" = xyes], [
    moecc_have_mpi=yes
    moecc_mpi_summary="yes (Open MPI `$PKG_CONFIG --modversion ompi-c 2>/dev/null`)"
  ], [test -n "$MPICC"], [
    moecc_have_mpi=yes
    moecc_mpi_summary="yes ($MPICC)"
  ])
  AS_IF([test "x$moecc_have_mpi" = xno && test "x$with_mpi" = xyes],
    [AC_MSG_ERROR([--with-mpi: neither mpicc nor the ompi-c pkg-config module was found])])
], [moecc_mpi_summary="no (--without-mpi)"])
AC_SUBST([MPICC])
AM_CONDITIONAL([HAVE_MPI], [test "x$moecc_have_mpi" = xyes])
])


# MOECC_ENABLE_SANITIZERS
# -----------------------
# --enable-sanitizers: SAN_CFLAGS and SAN_LDFLAGS get AddressSanitizer and
# UndefinedBehaviorSanitizer (checked to compile and link).
# --enable-werror: WERROR_CFLAGS=-Werror (kept out of CFLAGS so configure's
# own tests are not affected).
AC_DEFUN([MOECC_ENABLE_SANITIZERS], [
AC_ARG_ENABLE([sanitizers],
  [AS_HELP_STRING([--enable-sanitizers],
    [build with -fsanitize=address,undefined (default: no)])],
  [], [enable_sanitizers=no])
SAN_CFLAGS=
SAN_LDFLAGS=
AS_IF([test "x$enable_sanitizers" != xno], [
  moecc_san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  AC_MSG_CHECKING([whether $CC accepts $moecc_san])
  moecc_save_CFLAGS=$CFLAGS
  moecc_save_LDFLAGS=$LDFLAGS
  CFLAGS="$CFLAGS $moecc_san"
  LDFLAGS="$LDFLAGS $moecc_san"
  AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <stdlib.h>]],
      [[char *p = malloc(4); p[0] = 1; free(p);]])],
    [AC_MSG_RESULT([yes])],
    [AC_MSG_RESULT([no])
     AC_MSG_ERROR([--enable-sanitizers: $CC cannot build with $moecc_san (Debian: gcc's libasan and libubsan; see config.log)])])
  CFLAGS=$moecc_save_CFLAGS
  LDFLAGS=$moecc_save_LDFLAGS
  SAN_CFLAGS=$moecc_san
  SAN_LDFLAGS=$moecc_san
])
AC_SUBST([SAN_CFLAGS])
AC_SUBST([SAN_LDFLAGS])

AC_ARG_ENABLE([werror],
  [AS_HELP_STRING([--enable-werror],
    [treat compiler warnings as errors (default: no)])],
  [], [enable_werror=no])
WERROR_CFLAGS=
AS_IF([test "x$enable_werror" != xno], [WERROR_CFLAGS=-Werror])
AC_SUBST([WERROR_CFLAGS])
])
