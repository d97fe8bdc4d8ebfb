# cuda.m4: find the CUDA toolkit for moecc.                  -*- Autoconf -*-
#
# MOECC_CHECK_CUDA
# ----------------
# --with-cuda[=DIR]   not given: guess, and go on without CUDA (with a warning)
#                     when any piece is missing;
#                     yes: guess, and stop with an error when any is missing;
#                     DIR: the toolkit under DIR, required;
#                     no: build without CUDA.
# The guess: the directory above `nvcc' on PATH (following links and
# wrapper scripts to a directory with include/cuda_runtime.h), else
# /usr/local/cuda.
# --with-cuda-arch=LIST  GPU architectures for the default NVCC_FLAGS
#                     (default: 90a): "-gencode" SASS for each, PTX for the
#                     last one (its generic form: 90a gives compute_90).
#
# Checks that nvcc runs and compiles a kernel with NVCC_FLAGS, that
# cuda_runtime.h, cublas_v2.h and cublasLt.h compile, and that -lcudart,
# -lcublas and -lcublasLt link.
#
# Substitutes NVCC, NVCC_FLAGS, CUDA_HOME, CUDA_VERSION, CUDA_CPPFLAGS,
# CUDA_LDFLAGS, CUDA_LIBS; AM_CONDITIONAL([HAVE_CUDA]); defines HAVE_CUDA.
# Leaves moecc_have_cuda (yes/no) and moecc_cuda_summary for the summary.
AC_DEFUN([MOECC_CHECK_CUDA], [
AC_REQUIRE([AC_PROG_CC])
AC_REQUIRE([AC_CANONICAL_HOST])
AC_ARG_WITH([cuda],
  [AS_HELP_STRING([--with-cuda@<:@=DIR@:>@],
    [build the CUDA parts with the toolkit under DIR; "yes" guesses DIR but
     requires it (default: guess from nvcc on PATH, then /usr/local/cuda,
     and build without CUDA if it is not found)])],
  [], [with_cuda=guess])
AC_ARG_WITH([cuda-arch],
  [AS_HELP_STRING([--with-cuda-arch=LIST],
    [GPU architectures for nvcc, e.g. "80 90a" (default: 90a); not used
     when NVCC_FLAGS is set])],
  [], [with_cuda_arch=90a])
AC_ARG_VAR([NVCC], [CUDA compiler driver (default: DIR/bin/nvcc)])
AC_ARG_VAR([NVCC_FLAGS],
  [flags for nvcc (default: -O3 -std=c++17 and -gencode for --with-cuda-arch)])

moecc_have_cuda=no
moecc_cuda_missing=
moecc_cuda_summary=no
CUDA_HOME=
CUDA_VERSION=
CUDA_CPPFLAGS=
CUDA_LDFLAGS=
CUDA_LIBS=

AS_CASE([$with_cuda],
  [no],       [moecc_cuda_required=no],
  [guess],    [moecc_cuda_required=no],
  [yes|""],   [moecc_cuda_required=yes; with_cuda=yes],
              [moecc_cuda_required=yes; CUDA_HOME=$with_cuda])

AS_IF([test "x$with_cuda" = xno], [moecc_cuda_summary="no (--without-cuda)"], [
  # Where is the toolkit?
  AC_MSG_CHECKING([for the CUDA toolkit directory])
  AS_IF([test -z "$CUDA_HOME" && test -n "$NVCC"], [
    # An NVCC given by the user points at its toolkit.
    moecc_nvcc_path=`command -v "$NVCC" 2>/dev/null`
    AS_IF([test -n "$moecc_nvcc_path"],
      [CUDA_HOME=`dirname "$moecc_nvcc_path"`/..])])
  AS_IF([test -z "$CUDA_HOME"], [
    moecc_nvcc_path=`command -v nvcc 2>/dev/null`
    AS_IF([test -n "$moecc_nvcc_path"], [
      # nvcc on PATH may be a link or a wrapper script (/usr/local/bin/nvcc
      # running /usr/local/cuda-X/bin/nvcc): take the first of its
      # directory's parent, its resolved path's, and the TOP that nvcc
      # reports, that has the headers.
      moecc_cuda_cands=`dirname "$moecc_nvcc_path"`/..
      moecc_nvcc_real=`readlink -f "$moecc_nvcc_path" 2>/dev/null`
      AS_IF([test -n "$moecc_nvcc_real"],
        [moecc_cuda_cands="$moecc_cuda_cands `dirname "$moecc_nvcc_real"`/.."])
      moecc_nvcc_top=`"$moecc_nvcc_path" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#. TOP=//p' | sed 1q`
      AS_IF([test -n "$moecc_nvcc_top"],
        [moecc_cuda_cands="$moecc_cuda_cands $moecc_nvcc_top"])
      for moecc_dir in $moecc_cuda_cands /usr/local/cuda; do
        AS_IF([test -f "$moecc_dir/include/cuda_runtime.h"],
          [CUDA_HOME=$moecc_dir; break])
      done
      AS_IF([test -z "$CUDA_HOME"],
        [CUDA_HOME=`dirname "$moecc_nvcc_path"`/..])
    ], [CUDA_HOME=/usr/local/cuda])])
  # Make it absolute and tidy (keeping symbolic links as they are named).
  AS_IF([test -d "$CUDA_HOME"],
    [CUDA_HOME=`cd "$CUDA_HOME" && pwd`],
    [moecc_cuda_missing="$moecc_cuda_missing the directory $CUDA_HOME,"])
  AC_MSG_RESULT([$CUDA_HOME])

  # nvcc runs?
  AS_IF([test -z "$NVCC"], [NVCC=$CUDA_HOME/bin/nvcc])
  AC_MSG_CHECKING([whether $NVCC runs])
  AS_IF([$NVCC --version >&AS_MESSAGE_LOG_FD 2>&1], [
    CUDA_VERSION=`$NVCC --version 2>/dev/null | sed -n 's/^.*release \(@<:@0-9.@:>@*\),.*$/\1/p'`
    AC_MSG_RESULT([yes (release $CUDA_VERSION)])
  ], [
    AC_MSG_RESULT([no])
    moecc_cuda_missing="$moecc_cuda_missing nvcc ($NVCC),"
  ])

  # Default NVCC_FLAGS from --with-cuda-arch.
  AS_IF([test -z "$NVCC_FLAGS"], [
    NVCC_FLAGS="-O3 -std=c++17"
    moecc_cuda_ptx=
    for moecc_arch in `echo "$with_cuda_arch" | tr ',' ' '`; do
      moecc_arch=`echo "$moecc_arch" | sed -e 's/^sm_//' -e 's/^compute_//'`
      AS_CASE([$moecc_arch],
        [@<:@1-9@:>@@<:@0-9@:>@|@<:@1-9@:>@@<:@0-9@:>@@<:@af@:>@|@<:@1-9@:>@@<:@0-9@:>@@<:@0-9@:>@|@<:@1-9@:>@@<:@0-9@:>@@<:@0-9@:>@@<:@af@:>@], [],
        [AC_MSG_ERROR([--with-cuda-arch: "$moecc_arch" is not a GPU architecture such as 80, 90 or 90a])])
      NVCC_FLAGS="$NVCC_FLAGS -gencode=arch=compute_$moecc_arch,code=sm_$moecc_arch"
      moecc_cuda_ptx=`echo "$moecc_arch" | sed 's/@<:@af@:>@$//'`
    done
    AS_IF([test -n "$moecc_cuda_ptx"],
      [NVCC_FLAGS="$NVCC_FLAGS -gencode=arch=compute_$moecc_cuda_ptx,code=compute_$moecc_cuda_ptx"])
  ])

  # nvcc compiles a kernel with those flags (catches an architecture this
  # nvcc does not know, or a host compiler it refuses)?
  AS_IF([test -n "$CUDA_VERSION"], [
    AC_MSG_CHECKING([whether $NVCC compiles with $NVCC_FLAGS])
    cat > conftest.cu <<_MOECC_EOF
__global__ void moecc_conftest(float *x) { x@<:@threadIdx.x@:>@ *= 2.0f; }
int main(void) { moecc_conftest<<<1, 32>>>(0); return 0; }
_MOECC_EOF
    AS_IF([$NVCC $NVCC_FLAGS -c conftest.cu -o conftest.$ac_objext >&AS_MESSAGE_LOG_FD 2>&1],
      [AC_MSG_RESULT([yes])],
      [AC_MSG_RESULT([no])
       moecc_cuda_missing="$moecc_cuda_missing an nvcc that compiles with NVCC_FLAGS (see config.log),"])
    rm -f conftest.cu conftest.$ac_objext
  ])

  # Headers and libraries, with the C compiler as the runtime uses them.
  AS_IF([test "x$CUDA_HOME" = x/usr], [CUDA_CPPFLAGS=],
    [CUDA_CPPFLAGS="-I$CUDA_HOME/include"])
  moecc_save_CPPFLAGS=$CPPFLAGS
  moecc_save_LDFLAGS=$LDFLAGS
  moecc_save_LIBS=$LIBS
  CPPFLAGS="$CUDA_CPPFLAGS $CPPFLAGS"
  for moecc_hdr in cuda_runtime.h cublas_v2.h cublasLt.h; do
    AC_MSG_CHECKING([for $moecc_hdr])
    AC_COMPILE_IFELSE([AC_LANG_PROGRAM([[#include <$moecc_hdr>]], [[]])],
      [AC_MSG_RESULT([yes])],
      [AC_MSG_RESULT([no])
       moecc_cuda_missing="$moecc_cuda_missing $moecc_hdr,"])
  done

  # -lcudart: find the library directory that links.
  AC_MSG_CHECKING([for cudaGetDeviceCount in -lcudart])
  moecc_cuda_libdir=
  for moecc_dir in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" \
                   "$CUDA_HOME/lib/$host_cpu-linux-gnu" \
                   "$CUDA_HOME/targets/$host_cpu-linux/lib"; do
    test -d "$moecc_dir" || continue
    LDFLAGS="-L$moecc_dir $moecc_save_LDFLAGS"
    LIBS="-lcudart $moecc_save_LIBS"
    AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <cuda_runtime.h>]],
        [[int n = 0; return (int)cudaGetDeviceCount(&n);]])],
      [moecc_cuda_libdir=$moecc_dir; break])
  done
  AS_IF([test -n "$moecc_cuda_libdir"], [
    AC_MSG_RESULT([yes ($moecc_cuda_libdir)])
    # -rpath: test programs and trainers run without LD_LIBRARY_PATH.
    AS_IF([test "x$CUDA_HOME" = x/usr], [CUDA_LDFLAGS=],
      [CUDA_LDFLAGS="-L$moecc_cuda_libdir -Wl,-rpath,$moecc_cuda_libdir"])
    CUDA_LIBS="-lcudart"
    LDFLAGS="$CUDA_LDFLAGS $moecc_save_LDFLAGS"
    AC_MSG_CHECKING([for cublasCreate_v2 in -lcublas])
    LIBS="-lcublas -lcudart $moecc_save_LIBS"
    AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <cublas_v2.h>]],
        [[cublasHandle_t h; return (int)cublasCreate(&h);]])],
      [AC_MSG_RESULT([yes]); CUDA_LIBS="-lcublas $CUDA_LIBS"],
      [AC_MSG_RESULT([no])
       moecc_cuda_missing="$moecc_cuda_missing libcublas,"])
    AC_MSG_CHECKING([for cublasLtCreate in -lcublasLt])
    LIBS="-lcublasLt -lcudart $moecc_save_LIBS"
    AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <cublasLt.h>]],
        [[cublasLtHandle_t h; return (int)cublasLtCreate(&h);]])],
      [AC_MSG_RESULT([yes]); CUDA_LIBS="-lcublasLt $CUDA_LIBS"],
      [AC_MSG_RESULT([no])
       moecc_cuda_missing="$moecc_cuda_missing libcublasLt,"])
  ], [
    AC_MSG_RESULT([no])
    moecc_cuda_missing="$moecc_cuda_missing libcudart,"
  ])
  CPPFLAGS=$moecc_save_CPPFLAGS
  LDFLAGS=$moecc_save_LDFLAGS
  LIBS=$moecc_save_LIBS

  AS_IF([test -z "$moecc_cuda_missing"], [
    moecc_have_cuda=yes
    moecc_cuda_summary="yes ($CUDA_HOME, nvcc $CUDA_VERSION)"
  ], [
    moecc_cuda_missing=`echo "$moecc_cuda_missing" | sed -e 's/^ *//' -e 's/,$//'`
    AS_IF([test "x$moecc_cuda_required" = xyes],
      [AC_MSG_ERROR([CUDA was asked for (--with-cuda=$with_cuda) but is not usable under $CUDA_HOME: missing $moecc_cuda_missing. Point --with-cuda=DIR at the toolkit, or configure --without-cuda.])],
      [AC_MSG_WARN([CUDA not found under $CUDA_HOME (missing $moecc_cuda_missing); building without CUDA. Use --with-cuda=DIR to point at a toolkit.])])
    moecc_cuda_summary="no (not found: $moecc_cuda_missing)"
    CUDA_CPPFLAGS=
    CUDA_LDFLAGS=
    CUDA_LIBS=
  ])
])

AS_IF([test "x$moecc_have_cuda" = xyes],
  [AC_DEFINE([HAVE_CUDA], [1], [Define to 1 if the CUDA toolkit (nvcc, cudart, cuBLAS) is usable.])])
AC_SUBST([NVCC])
AC_SUBST([NVCC_FLAGS])
AC_SUBST([CUDA_HOME])
AC_SUBST([CUDA_VERSION])
AC_SUBST([CUDA_CPPFLAGS])
AC_SUBST([CUDA_LDFLAGS])
AC_SUBST([CUDA_LIBS])
AM_CONDITIONAL([HAVE_CUDA], [test "x$moecc_have_cuda" = xyes])
])
