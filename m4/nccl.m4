# nccl.m4: find NCCL for moecc's multi-GPU runtime.           -*- Autoconf -*-
#
# MOECC_CHECK_NCCL
# ----------------
# --with-nccl[=DIR]   not given: guess, and go on without NCCL (with a warning)
#                     when it is missing;
#                     yes: guess, and stop with an error when it is missing;
#                     DIR: NCCL under DIR (DIR/include, DIR/lib64 or DIR/lib),
#                     required;
#                     no: build without NCCL.
# The guess: CUDA_HOME (include/, lib64/ or lib/), then the compiler's
# default search paths. NCCL is used only with CUDA: asking for it without
# CUDA is an error, guessing it without CUDA gives "no".
#
# Checks that nccl.h compiles and that ncclGetVersion links with -lnccl.
# Substitutes NCCL_CPPFLAGS, NCCL_LDFLAGS, NCCL_LIBS, NCCL_VERSION;
# AM_CONDITIONAL([HAVE_NCCL]); defines HAVE_NCCL.
# Leaves moecc_have_nccl (yes/no) and moecc_nccl_summary for the summary.
AC_DEFUN([MOECC_CHECK_NCCL], [
AC_REQUIRE([MOECC_CHECK_CUDA])
AC_ARG_WITH([nccl],
  [AS_HELP_STRING([--with-nccl@<:@=DIR@:>@],
    [use NCCL under DIR for multi-GPU training; "yes" guesses DIR but
     requires it (default: guess from the CUDA toolkit, then the system
     paths, and build without NCCL if it is not found)])],
  [], [with_nccl=guess])

moecc_have_nccl=no
moecc_nccl_summary=no
NCCL_CPPFLAGS=
NCCL_LDFLAGS=
NCCL_LIBS=
NCCL_VERSION=

AS_CASE([$with_nccl],
  [no],     [moecc_nccl_required=no;  moecc_nccl_dirs=],
  [guess],  [moecc_nccl_required=no;  moecc_nccl_dirs="$CUDA_HOME system"],
  [yes|""], [moecc_nccl_required=yes; with_nccl=yes
             moecc_nccl_dirs="$CUDA_HOME system"],
            [moecc_nccl_required=yes; moecc_nccl_dirs=$with_nccl])

AS_IF([test "x$with_nccl" = xno], [moecc_nccl_summary="no (--without-nccl)"],
      [test "x$moecc_have_cuda" != xyes], [
  AS_IF([test "x$moecc_nccl_required" = xyes],
    [AC_MSG_ERROR([NCCL was asked for (--with-nccl=$with_nccl) but CUDA is not available; NCCL is used only with CUDA (see --with-cuda)])])
  moecc_nccl_summary="no (needs CUDA)"
], [
  moecc_save_CPPFLAGS=$CPPFLAGS
  moecc_save_LDFLAGS=$LDFLAGS
  moecc_save_LIBS=$LIBS
  moecc_nccl_hdr_found=no
  moecc_nccl_found=no
  for moecc_nccl_dir in $moecc_nccl_dirs; do
    AS_IF([test "x$moecc_nccl_dir" = xsystem], [
      moecc_nccl_cppflags=
      moecc_nccl_libdirs=system
      moecc_nccl_where="the system paths"
    ], [
      moecc_nccl_cppflags="-I$moecc_nccl_dir/include"
      moecc_nccl_libdirs="$moecc_nccl_dir/lib64 $moecc_nccl_dir/lib"
      moecc_nccl_where=$moecc_nccl_dir
    ])
    AC_MSG_CHECKING([for nccl.h in $moecc_nccl_where])
    CPPFLAGS="$moecc_nccl_cppflags $CUDA_CPPFLAGS $moecc_save_CPPFLAGS"
    moecc_nccl_hdr_ok=no
    # Under a directory, the header must be that directory's (the CUDA
    # include path may hold another one).
    AS_IF([test "x$moecc_nccl_dir" = xsystem || test -f "$moecc_nccl_dir/include/nccl.h"], [
      AC_COMPILE_IFELSE([AC_LANG_PROGRAM([[#include <nccl.h>]],
          [[int v = NCCL_VERSION_CODE; (void)v;]])],
        [moecc_nccl_hdr_ok=yes])])
    AC_MSG_RESULT([$moecc_nccl_hdr_ok])
    test "x$moecc_nccl_hdr_ok" = xyes || continue
    moecc_nccl_hdr_found=yes
    for moecc_nccl_libdir in $moecc_nccl_libdirs; do
      AS_IF([test "x$moecc_nccl_libdir" = xsystem],
        [moecc_nccl_ldflags=],
        [test -d "$moecc_nccl_libdir"],
        [moecc_nccl_ldflags="-L$moecc_nccl_libdir -Wl,-rpath,$moecc_nccl_libdir"],
        [continue])
      AC_MSG_CHECKING([for ncclGetVersion in -lnccl ($moecc_nccl_libdir)])
      LDFLAGS="$moecc_nccl_ldflags $CUDA_LDFLAGS $moecc_save_LDFLAGS"
      LIBS="-lnccl $CUDA_LIBS $moecc_save_LIBS"
      AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <nccl.h>]],
          [[int v = 0; return (int)ncclGetVersion(&v);]])],
        [AC_MSG_RESULT([yes]); moecc_nccl_found=yes],
        [AC_MSG_RESULT([no])])
      test "x$moecc_nccl_found" = xyes && break
    done
    test "x$moecc_nccl_found" = xyes && break
  done

  AS_IF([test "x$moecc_nccl_found" = xyes], [
    NCCL_CPPFLAGS=$moecc_nccl_cppflags
    NCCL_LDFLAGS=$moecc_nccl_ldflags
    NCCL_LIBS=-lnccl
    AC_COMPUTE_INT([moecc_nccl_major], [NCCL_MAJOR], [[#include <nccl.h>]], [moecc_nccl_major=])
    AC_COMPUTE_INT([moecc_nccl_minor], [NCCL_MINOR], [[#include <nccl.h>]], [moecc_nccl_minor=])
    AC_COMPUTE_INT([moecc_nccl_patch], [NCCL_PATCH], [[#include <nccl.h>]], [moecc_nccl_patch=])
    AS_IF([test -n "$moecc_nccl_major"],
      [NCCL_VERSION="$moecc_nccl_major.$moecc_nccl_minor.$moecc_nccl_patch"])
    moecc_have_nccl=yes
    AS_IF([test -n "$NCCL_VERSION"],
      [moecc_nccl_summary="yes ($NCCL_VERSION, $moecc_nccl_where)"],
      [moecc_nccl_summary="yes ($moecc_nccl_where)"])
  ], [
    AS_IF([test "x$moecc_nccl_hdr_found" = xyes],
      [moecc_nccl_missing="libnccl"],
      [moecc_nccl_missing="nccl.h"])
    moecc_nccl_places=`echo "$moecc_nccl_dirs" | sed 's/system/the system paths/'`
    AS_IF([test "x$moecc_nccl_required" = xyes],
      [AC_MSG_ERROR([NCCL was asked for (--with-nccl=$with_nccl) but is not usable: $moecc_nccl_missing not found in $moecc_nccl_places. Point --with-nccl=DIR at it, or configure --without-nccl.])],
      [AC_MSG_WARN([NCCL not found ($moecc_nccl_missing not in $moecc_nccl_places); building without multi-GPU communication. Use --with-nccl=DIR to point at it.])])
    moecc_nccl_summary="no (not found: $moecc_nccl_missing)"
  ])
  CPPFLAGS=$moecc_save_CPPFLAGS
  LDFLAGS=$moecc_save_LDFLAGS
  LIBS=$moecc_save_LIBS
])

AS_IF([test "x$moecc_have_nccl" = xyes],
  [AC_DEFINE([HAVE_NCCL], [1], [Define to 1 if NCCL is usable.])])
AC_SUBST([NCCL_CPPFLAGS])
AC_SUBST([NCCL_LDFLAGS])
AC_SUBST([NCCL_LIBS])
AC_SUBST([NCCL_VERSION])
AM_CONDITIONAL([HAVE_NCCL], [test "x$moecc_have_nccl" = xyes])
])
