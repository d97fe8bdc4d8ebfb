/* moert_core.h: the core of libmoert, the runtime that moecc's generated
 * trainers link: errors, counter-based random numbers, safetensors
 * checkpoints, a JSON writer and JSON-lines metrics, a progress line, a
 * table-driven command-line parser, signal flags and clocks.
 *
 * Conventions
 * - Functions that can fail take a `moert_error *err` (which may be NULL) and
 *   return NULL or -1 on failure with a one-line message in err->msg that
 *   names the file or option concerned. They return a pointer or 0 otherwise.
 * - Nothing here keeps global state except the signal flags.
 * - Multi-byte data in checkpoints is little-endian, as on every host that
 *   moecc targets; the checkpoint code refuses to run on a big-endian host.
 */
#ifndef MOERT_CORE_H
#define MOERT_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MOERT_PRINTF(fmt_index, first_arg) \
	__attribute__((format(printf, fmt_index, first_arg)))
#else
#define MOERT_PRINTF(fmt_index, first_arg)
#endif

/* ---------------------------------------------------------------------------
 * Errors (core_error.c)
 * ------------------------------------------------------------------------- */

typedef struct moert_error {
	char msg[512];
} moert_error;

/* Formats a message into err->msg; does nothing when err is NULL. A message
 * too long for the buffer is cut at a UTF-8 character boundary and ends in
 * "...". err->msg may itself be one of the arguments (to add a prefix). */
void moert_error_set(moert_error *err, const char *fmt, ...) MOERT_PRINTF(2, 3);

/* Empties err->msg (err may be NULL). */
void moert_error_clear(moert_error *err);

/* ---------------------------------------------------------------------------
 * Random numbers (core_rng.c)
 *
 * Philox4x32-10 (Salmon et al., SC'11; the generator of cuRAND and JAX) keyed
 * with the 64-bit seed, on the 128-bit counter (counter, stream). Every draw
 * is a pure function of (seed, stream, counter): one counter value gives one
 * draw, so element i of a fill is draw number start + i and can be recomputed
 * anywhere, on any device, in any order. Streams separate independent uses
 * (one per parameter tensor, one for dropout, one for data order, ...).
 * ------------------------------------------------------------------------- */

/* The raw block: Philox4x32-10 with key (seed lo, seed hi) on the counter
 * words (counter lo, counter hi, stream lo, stream hi). */
void moert_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2],
			 uint32_t out[4]);

uint64_t moert_rng_u64(uint64_t seed, uint64_t stream, uint64_t counter);
/* Uniform in [0, 1): 24 random bits (float), 53 random bits (double). */
float moert_rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter);
double moert_rng_uniform_f64(uint64_t seed, uint64_t stream, uint64_t counter);
/* Standard normal by Box-Muller from two 53-bit uniforms of the same block
 * (the cosine branch). */
double moert_rng_normal(uint64_t seed, uint64_t stream, uint64_t counter);

/* A stream as a cursor. Its whole state is these three numbers: store them
 * in a checkpoint (e.g. as an I64 tensor of shape [3]) to resume exactly. */
typedef struct moert_rng {
	uint64_t seed;
	uint64_t stream;
	uint64_t counter; /* the next draw */
} moert_rng;

void moert_rng_init(moert_rng *r, uint64_t seed, uint64_t stream);
uint64_t moert_rng_next_u64(moert_rng *r);
float moert_rng_next_uniform(moert_rng *r);
double moert_rng_next_normal(moert_rng *r);
/* Unbiased integer in [0, n) (returns 0 when n == 0). Usually one draw;
 * rejection takes another draw with probability < n / 2^64. */
uint64_t moert_rng_next_below(moert_rng *r, uint64_t n);

/* x[i] = mean + std * normal(counter + i); advances the counter by n. */
void moert_rng_fill_normal(moert_rng *r, float *x, size_t n, float mean,
			   float std);
/* Normal(mean, std) truncated to [mean - 2 std, mean + 2 std] by redrawing
 * (the distribution of torch.nn.init.trunc_normal_(x, mean, std, a, b) with
 * a = mean - 2 std, b = mean + 2 std; note that torch's own defaults a = -2,
 * b = 2 are absolute, not multiples of std). Draws are taken one counter after
 * the other, so the counter advances by n plus the number of redraws (about
 * 4.8% of n). */
void moert_rng_fill_trunc_normal(moert_rng *r, float *x, size_t n, float mean,
				 float std);
/* x[i] = uniform in [a, b) from counter + i; advances the counter by n. */
void moert_rng_fill_uniform(moert_rng *r, float *x, size_t n, float a, float b);

/* ---------------------------------------------------------------------------
 * Checkpoints: safetensors files (core_ckpt.c)
 *
 * Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian
 * header length N, N bytes of JSON header padded with spaces to a multiple of
 * 8, then the tensors' bytes back to back in the order they were added. The
 * header maps each name to {"dtype", "shape", "data_offsets"} and may carry
 * "__metadata__", a string-to-string map. The writer adds the metadata entry
 * "moert.crc32c" (CRC-32C of the tensor bytes, 8 hex digits); the reader
 * verifies it when present, so a bit flip anywhere in the data is caught.
 * Files written by other tools (without it) load as usual.
 * ------------------------------------------------------------------------- */

typedef enum moert_dtype {
	MOERT_DTYPE_BOOL,
	MOERT_DTYPE_U8,
	MOERT_DTYPE_I8,
	MOERT_DTYPE_U16,
	MOERT_DTYPE_I16,
	MOERT_DTYPE_F16,
	MOERT_DTYPE_BF16,
	MOERT_DTYPE_U32,
	MOERT_DTYPE_I32,
	MOERT_DTYPE_F32,
	MOERT_DTYPE_U64,
	MOERT_DTYPE_I64,
	MOERT_DTYPE_F64,
	MOERT_DTYPE_COUNT
} moert_dtype;

/* "F32", "BF16", ...; "?" for a value out of range. */
const char *moert_dtype_name(moert_dtype dtype);
/* Bytes per element; 0 for a value out of range. */
size_t moert_dtype_size(moert_dtype dtype);
/* Looks a safetensors dtype name up; -1 when unknown. */
int moert_dtype_parse(const char *name, moert_dtype *dtype);

/* bf16 <-> f32 (round to nearest even; NaN stays NaN). */
uint16_t moert_bf16_from_f32(float f);
float moert_bf16_to_f32(uint16_t h);

/* The most dimensions a tensor may have in a checkpoint (as in PyTorch). */
#define MOERT_CKPT_MAX_NDIM 64
/* The largest JSON header accepted (the limit of the safetensors library). */
#define MOERT_CKPT_MAX_HEADER 100000000u

typedef struct moert_ckpt_writer moert_ckpt_writer;

/* Starts a checkpoint that moert_ckpt_finish will write to path. Fails only
 * on an empty path or when out of memory; the functions below accept the
 * NULL it then returns (add and meta return -1, finish fails). */
moert_ckpt_writer *moert_ckpt_begin(const char *path, moert_error *err);
/* Adds a tensor. name and shape are copied; data is not: it must stay valid
 * until moert_ckpt_finish. shape has ndim entries (ndim 0: a scalar). Returns
 * -1 on a bad argument (bad name or dtype, negative dimension, ...); the first
 * such problem also makes moert_ckpt_finish fail with its message, so a caller
 * may check only moert_ckpt_finish, which also refuses duplicate names. */
int moert_ckpt_add(moert_ckpt_writer *w, const char *name, moert_dtype dtype,
		   int ndim, const int64_t *shape, const void *data);
/* Adds a string to "__metadata__" (both copied). Same error rules. */
int moert_ckpt_meta(moert_ckpt_writer *w, const char *key, const char *value);
/* Writes the file atomically and frees w (whatever the outcome): writes
 * path.tmp.<pid> in the same directory, fsyncs it, renames it over path and
 * fsyncs the directory. On failure the temporary file is removed, a file
 * already at path is left as it was, and err says "path: problem
 * (strerror)". */
int moert_ckpt_finish(moert_ckpt_writer *w, moert_error *err);
/* Drops w without writing anything. NULL is fine. */
void moert_ckpt_abort(moert_ckpt_writer *w);

typedef struct moert_ckpt moert_ckpt;

/* Opens and validates a checkpoint: the header (strict JSON of the expected
 * shape, known dtypes, sizes that match shapes, tensors that tile the data
 * exactly) and, when the file carries it, the data checksum. Anything else is
 * refused with a message that names the path and the problem. The file stays
 * open until moert_ckpt_close; tensors are read on demand. */
moert_ckpt *moert_ckpt_open(const char *path, moert_error *err);
void moert_ckpt_close(moert_ckpt *c);

/* Number of tensors and their names, in the order of their data. */
size_t moert_ckpt_count(const moert_ckpt *c);
const char *moert_ckpt_name(const moert_ckpt *c, size_t i);
bool moert_ckpt_has(const moert_ckpt *c, const char *name);
/* dtype, ndim and shape (owned by c) of a tensor; -1 when there is none. Any
 * of the outputs may be NULL. */
int moert_ckpt_info(const moert_ckpt *c, const char *name, moert_dtype *dtype,
		    int *ndim, const int64_t **shape);
/* Copies tensor `name` into dst after checking that its dtype and shape are
 * exactly the given ones ("ckpt: tensor 'w': expected F32 [4, 8], found F32
 * [4, 6]"). */
int moert_ckpt_get(const moert_ckpt *c, const char *name, moert_dtype dtype,
		   int ndim, const int64_t *shape, void *dst, moert_error *err);
/* Like moert_ckpt_get, but copies only entries [first, first + count) along
 * the first dimension (e.g. the experts one rank owns); shape is the full
 * shape expected in the file. */
int moert_ckpt_get_rows(const moert_ckpt *c, const char *name,
			moert_dtype dtype, int ndim, const int64_t *shape,
			int64_t first, int64_t count, void *dst,
			moert_error *err);
/* Metadata string for key, or NULL. */
const char *moert_ckpt_meta_get(const moert_ckpt *c, const char *key);
/* Number of metadata entries and their keys, in file order. */
size_t moert_ckpt_meta_count(const moert_ckpt *c);
const char *moert_ckpt_meta_key(const moert_ckpt *c, size_t i);

/* ---------------------------------------------------------------------------
 * JSON writer (core_json.c)
 *
 * Builds JSON text in a growable buffer. Every value function takes a key:
 * the member name inside an object, NULL inside an array or at the top.
 * Strings are escaped (invalid UTF-8 becomes U+FFFD); non-finite numbers are
 * written as null; doubles and floats use the shortest text that reads back
 * to the same value. Errors (out of memory, misuse) are sticky: see
 * moert_jw_error.
 * ------------------------------------------------------------------------- */

#define MOERT_JW_MAX_DEPTH 32

typedef struct moert_jw {
	char *buf; /* NUL-terminated text of len bytes; NULL while empty */
	size_t len;
	size_t cap;
	int depth;
	unsigned char in_array[MOERT_JW_MAX_DEPTH];
	unsigned char has_items[MOERT_JW_MAX_DEPTH];
	const char *error; /* first problem, or NULL */
} moert_jw;

void moert_jw_init(moert_jw *j);
void moert_jw_free(moert_jw *j);
/* Empties the buffer (keeps its memory) and clears the error. */
void moert_jw_reset(moert_jw *j);
/* NULL when everything written so far is well-formed, else a message. */
const char *moert_jw_error(const moert_jw *j);

void moert_jw_object_begin(moert_jw *j, const char *key);
void moert_jw_object_end(moert_jw *j);
void moert_jw_array_begin(moert_jw *j, const char *key);
void moert_jw_array_end(moert_jw *j);
void moert_jw_null(moert_jw *j, const char *key);
void moert_jw_bool(moert_jw *j, const char *key, bool v);
void moert_jw_int(moert_jw *j, const char *key, int64_t v);
void moert_jw_uint(moert_jw *j, const char *key, uint64_t v);
void moert_jw_double(moert_jw *j, const char *key, double v);
void moert_jw_float(moert_jw *j, const char *key, float v);
/* s NULL writes null. */
void moert_jw_string(moert_jw *j, const char *key, const char *s);
void moert_jw_string_len(moert_jw *j, const char *key, const char *s,
			 size_t len);
void moert_jw_doubles(moert_jw *j, const char *key, const double *v, size_t n);
void moert_jw_floats(moert_jw *j, const char *key, const float *v, size_t n);
void moert_jw_ints(moert_jw *j, const char *key, const int64_t *v, size_t n);
void moert_jw_i32s(moert_jw *j, const char *key, const int32_t *v, size_t n);
/* A rows x cols row-major matrix as an array of arrays (e.g. dataset x
 * expert counts). */
void moert_jw_int_matrix(moert_jw *j, const char *key, const int64_t *v,
			 size_t rows, size_t cols);

/* True when s[0..len) is valid UTF-8 (no overlong forms, no surrogates). */
bool moert_utf8_valid(const char *s, size_t len);

/* ---------------------------------------------------------------------------
 * Metrics: one JSON object per line (core_metrics.c)
 *
 *	moert_jw *j = moert_metrics_begin(m);
 *	moert_jw_int(j, "step", step);
 *	moert_jw_double(j, "loss", loss);
 *	moert_jw_int_matrix(j, "dataset_expert", counts, n_datasets, n_experts);
 *	if (moert_metrics_end(m, &err)) ... // writes the line and flushes
 * ------------------------------------------------------------------------- */

typedef struct moert_metrics moert_metrics;

/* Opens path for appending (append true) or truncates it. */
moert_metrics *moert_metrics_open(const char *path, bool append,
				  moert_error *err);
/* Starts a record: returns a writer with an open top-level object. */
moert_jw *moert_metrics_begin(moert_metrics *m);
/* Closes the record, writes it as one line and flushes the file. */
int moert_metrics_end(moert_metrics *m, moert_error *err);
/* Closes the file (NULL is fine); -1 if a buffered write failed. */
int moert_metrics_close(moert_metrics *m, moert_error *err);

/* ---------------------------------------------------------------------------
 * Progress line (core_metrics.c)
 *
 * On a terminal: one line rewritten in place with \r at most every
 * `interval` seconds (default 0.1), cut to the terminal width. Elsewhere (a
 * log file, a pipe): a plain line at most every `interval` seconds (default
 * 30). `force` prints regardless of the interval.
 * ------------------------------------------------------------------------- */

typedef struct moert_progress_line {
	FILE *out;
	bool tty;
	double interval; /* seconds between lines; may be changed */
	double last;     /* moert_now() of the last line, < 0 before the first */
	size_t shown;    /* characters of the line now on the terminal */
} moert_progress_line;

void moert_progress_init(moert_progress_line *p, FILE *out);
void moert_progress(moert_progress_line *p, bool force, const char *fmt, ...)
	MOERT_PRINTF(3, 4);
/* On a terminal: erases the line, so that other output can follow. */
void moert_progress_clear(moert_progress_line *p);
/* On a terminal: ends the line with a newline, keeping it on screen. */
void moert_progress_end(moert_progress_line *p);

/* ---------------------------------------------------------------------------
 * Command-line options (core_args.c)
 *
 *	int steps = 3000; double lr = 1e-3; const char *data = "data";
 *	bool resume = false;
 *	const moert_arg opts[] = {
 *		{"steps", 's', MOERT_ARG_INT, &steps, "training steps", NULL},
 *		{"lr", 0, MOERT_ARG_DOUBLE, &lr, "peak learning rate", NULL},
 *		{"data", 0, MOERT_ARG_STRING, &data, "dataset root", "DIR"},
 *		{"resume", 0, MOERT_ARG_FLAG, &resume, "resume from ckpt", NULL},
 *	};
 *	switch (moert_args_parse(opts, 4, argc, argv, &err)) {
 *	case MOERT_ARGS_HELP:
 *		moert_args_help(stdout, argv[0], "Train damex.", opts, 4);
 *		return 0;
 *	case MOERT_ARGS_ERROR:
 *		fprintf(stderr, "%s: %s\nTry '%s --help'.\n", argv[0], err.msg,
 *			argv[0]);
 *		return 2;
 *	}
 *
 * Accepted: --name value, --name=value, -s value, -svalue, --flag,
 * --no-flag, --flag=true|false|yes|no|on|off|1|0, -h/--help, and "--" to end
 * the options. Positional arguments are refused. A value that starts with
 * "--" must be given as --name=value.
 * ------------------------------------------------------------------------- */

typedef enum moert_arg_kind {
	MOERT_ARG_INT,    /* int * */
	MOERT_ARG_INT64,  /* int64_t * */
	MOERT_ARG_DOUBLE, /* double *, finite */
	MOERT_ARG_STRING, /* const char ** (points into argv) */
	MOERT_ARG_FLAG    /* bool * */
} moert_arg_kind;

typedef struct moert_arg {
	const char *name;    /* long name without "--" */
	char short_name;     /* 0 for none */
	moert_arg_kind kind;
	void *value;         /* holds the default on entry */
	const char *help;
	const char *metavar; /* shown in --help; NULL: N, X or STR by kind */
} moert_arg;

enum {
	MOERT_ARGS_OK = 0,
	MOERT_ARGS_HELP = 1, /* --help seen: print moert_args_help, exit 0 */
	MOERT_ARGS_ERROR = 2 /* usage error in err: exit 2 */
};

/* Parses argv[1..argc). Values are stored only when everything parsed: on
 * MOERT_ARGS_HELP and MOERT_ARGS_ERROR the defaults are untouched. --help
 * anywhere wins over errors elsewhere. */
int moert_args_parse(const moert_arg *opts, size_t n, int argc,
		     char *const argv[], moert_error *err);
/* Writes "Usage: prog [options]", the summary and a table of the options
 * with their current values (before parsing: the defaults). */
void moert_args_help(FILE *out, const char *prog, const char *summary,
		     const moert_arg *opts, size_t n);

/* ---------------------------------------------------------------------------
 * Signals (core_signal.c)
 *
 * After moert_signal_install, a first SIGINT or SIGTERM only sets a flag
 * that the training loop polls to checkpoint and stop cleanly; a second one
 * (either) restores the default action and ends the process as usual.
 * Installing again clears the flag.
 * ------------------------------------------------------------------------- */

int moert_signal_install(moert_error *err);
bool moert_signal_stop_requested(void);
/* The signal that asked to stop, 0 if none. */
int moert_signal_received(void);

/* ---------------------------------------------------------------------------
 * Clocks (core_timer.c)
 * ------------------------------------------------------------------------- */

/* Seconds on a monotonic clock (for durations). */
double moert_now(void);
/* Seconds since the Unix epoch (for timestamps in metrics). */
double moert_wall_time(void);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_CORE_H */
