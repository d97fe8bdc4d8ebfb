/* fuzz_gen.c: write the inputs of the robustness test (robust.sh).
 *
 *   fuzz_gen OUTDIR [SEEDFILE...]
 *
 * Writes OUTDIR/NNNN-what.moe: hand-made hostile inputs (empty, only
 * comments, garbage bytes, a 1 MB line, 100k nested brackets, 100k unary
 * minus, a 100k-term sum, enormous numbers, a 10 KB identifier, NUL bytes,
 * everything unterminated, huge models), random token soup, and mutations
 * of every SEEDFILE (truncation at every 97th byte, bit flips, deletions,
 * duplications, swapped lines, numbers replaced by extreme ones). The
 * output depends on nothing but the seed files: a failure found once is
 * found again by the next run. Prints how many files it wrote. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *outdir;
static int nfiles;

/* ---- a deterministic PRNG (splitmix64) ---------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [0, n), n > 0 */
static size_t below(size_t n)
{
    return (size_t)(rng() % n);
}

/* ---- a growable byte buffer ---------------------------------------------- */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_gen: %s: %s\n", what, strerror(errno));
    exit(99);
}

static void put(buf *b, const void *data, size_t n)
{
    if (n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            die("out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void printf_(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void printf_(buf *b, const char *fmt, ...)
{
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void repeat_str(buf *b, const char *s, size_t times)
{
    for (size_t i = 0; i < times; i++)
        puts_(b, s);
}

/* Write b as the next input, named after what it is; empties b. */
static void emit(buf *b, const char *what)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%05d-%s.moe", outdir, nfiles++, what);
    FILE *f = fopen(path, "wb");
    if (!f)
        die(path);
    if (b->len && fwrite(b->p, 1, b->len, f) != b->len)
        die(path);
    if (fclose(f) != 0)
        die(path);
    b->len = 0;
}

static void emit_str(const char *s, const char *what)
{
    buf b = { 0 };
    puts_(&b, s);
    emit(&b, what);
    free(b.p);
}

/* ---- hand-made hostile inputs ---------------------------------------------- */

static const char good_model[] =
    "dataset d(format = idx, path = \"d\", classes = 10)\n"
    "model m {\n"
    "    input(channels = 1, height = 28, width = 28)\n"
    "    patch_embed(patch = 4, dim = 64)\n"
    "    pool()\n"
    "    classifier()\n"
    "}\n";

static void edge_cases(void)
{
    buf b = { 0 };

    emit(&b, "empty");
    emit_str("\n\n\n", "newlines");
    emit_str("# only a comment\n# and another\n/* and a block\n   comment */\n", "comments");
    emit_str("# no newline at the end", "comment-no-newline");
    emit_str("/* unterminated", "open-comment");
    emit_str("/* /* nested */ */", "nested-comment");
    emit_str("const S = \"unterminated", "open-string");
    emit_str("const S = \"ends in a backslash\\", "open-string-backslash");
    emit_str("const S = \"backslash newline \\\n\"", "string-backslash-newline");
    emit_str("const S = 'single", "open-single-quote");
    emit_str("const S = 'single \\' quote'", "single-quote-escape");
    emit_str("model m {", "open-brace");
    emit_str("model m { input(", "open-paren");
    emit_str("dataset d(format = idx, path = \"d\", labels = [\"a\", ", "open-list");
    emit_str("model m { moe(router = dataset_aware(map = {a: ", "open-map");
    emit_str("const X = 1 +", "open-expr");
    emit_str("const", "lone-const");
    emit_str("const X", "const-no-value");
    emit_str("}}}}]]]))))", "closers");
    emit_str("model m { } } model n { }", "extra-close");
    emit_str(good_model, "good");
    emit_str("model m { input(channels = 1, height = 28, width = 28) }", "model-only-input");
    emit_str("dataset d(format = idx, path = \"d\", classes = 10) model m { }", "empty-model");

    /* NUL bytes, in code, strings and comments */
    static const char nul_code[] = "const X = 1\0const Y = 2\n";
    put(&b, nul_code, sizeof nul_code - 1);
    emit(&b, "nul-in-code");
    static const char nul_str[] = "const S = \"a\0b\"\n";
    put(&b, nul_str, sizeof nul_str - 1);
    emit(&b, "nul-in-string");
    static const char nul_cmt[] = "# a\0b\n/* c\0d */\n";
    put(&b, nul_cmt, sizeof nul_cmt - 1);
    emit(&b, "nul-in-comment");
    put(&b, "\0\0\0\0", 4);
    emit(&b, "only-nul");
    static const char nul_single[] = "const S = 'a\0b'\n";
    put(&b, nul_single, sizeof nul_single - 1);
    emit(&b, "nul-in-single-quotes");

    /* every byte value, alone and after a valid prefix */
    for (int c = 0; c < 256; c += 1) {
        char ch = (char)c;
        puts_(&b, "const X = ");
        put(&b, &ch, 1);
        puts_(&b, " 1\n");
    }
    emit(&b, "every-byte");
    for (int c = 0; c < 256; c++) {
        char ch = (char)c;
        put(&b, "\"", 1);
        put(&b, &ch, 1);
        put(&b, "\\", 1);
        put(&b, &ch, 1);
        put(&b, "\"\n", 2);
    }
    emit(&b, "every-escape");

    /* numbers at and past the edges */
    static const char *const numbers[] = {
        "9223372036854775807", "9223372036854775808", "-9223372036854775808",
        "99999999999999999999999999999999999999", "1e308", "1e309", "1e999999", "1e-999999",
        "1e-310", "4.9e-324", "0.0", "-0.0", ".5", "5.", "1e", "1e+", "1e-", "1.2.3", "0x10",
        "1_000_000", "1__0", "_1", "1_", "00000000000000000000000000001", "1e1_0", ".e5",
        "1.e5", "123abc", "9_223_372_036_854_775_807",
    };
    for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++) {
        printf_(&b, "const X = %s\n", numbers[i]);
        printf_(&b, "const Y = -%s\nconst Z = X * Y / X - Y %% 7\n", numbers[i]);
        char what[64];
        snprintf(what, sizeof what, "number-%zu", i);
        emit(&b, what);
    }
    puts_(&b, "const X = ");
    repeat_str(&b, "9", 1000);
    emit(&b, "1000-digits");
    puts_(&b, "const X = 0.");
    repeat_str(&b, "1", 5000);
    puts_(&b, "e-5\n");
    emit(&b, "5000-digit-float");
    puts_(&b, "const X = 1e");
    repeat_str(&b, "9", 200);
    emit(&b, "huge-exponent");
    /* integer arithmetic at the edges */
    emit_str("const A = 9223372036854775807\nconst B = A + 1\nconst C = -A - 2\n"
             "const D = (-A - 1) / -1\nconst E = (-A - 1) % -1\nconst F = -(-A - 1)\n"
             "const G = A * A\nconst H = 1 / 0\nconst I = 1 % 0\nconst J = 1.5 % 2\n"
             "const K = 1e308 * 10\nconst L = 1e308 + 1e308\nconst M = 1.0 / 0\n",
             "arithmetic-edges");

    /* a 1 MB line: a long string, a long run of blanks, a long sum on one line */
    puts_(&b, "const S = \"");
    repeat_str(&b, "x", 1 << 20);
    puts_(&b, "\"\n");
    emit(&b, "1mb-string");
    repeat_str(&b, " ", 1 << 20);
    puts_(&b, "@ $ ` ~\n");
    emit(&b, "1mb-blanks");
    repeat_str(&b, "@", 1 << 20);
    emit(&b, "1mb-stray");
    puts_(&b, "model m { input(channels = 1, height = 28, width = 28) ");
    repeat_str(&b, "layernorm() ", 1 << 16);
    puts_(&b, "}\n");
    emit(&b, "1mb-line-of-layers");

    /* 100k nested brackets of each kind, and mixed */
    static const char *const opens[] = { "(", "[", "{" };
    static const char *const names[] = { "paren", "bracket", "brace" };
    for (int k = 0; k < 3; k++) {
        puts_(&b, "const X = ");
        repeat_str(&b, opens[k], 100000);
        char what[64];
        snprintf(what, sizeof what, "100k-%s", names[k]);
        emit(&b, what);
        puts_(&b, "model m ");
        repeat_str(&b, opens[k], 100000);
        snprintf(what, sizeof what, "100k-%s-model", names[k]);
        emit(&b, what);
    }
    puts_(&b, "const X = ");
    for (int i = 0; i < 100000; i++)
        puts_(&b, opens[below(3)]);
    emit(&b, "100k-mixed");
    /* nested exactly to the limit, and one past it, then closed */
    for (int depth = 63; depth <= 66; depth++) {
        puts_(&b, "const X = ");
        repeat_str(&b, "(", (size_t)depth);
        puts_(&b, "1");
        repeat_str(&b, ")", (size_t)depth);
        puts_(&b, "\nconst L = ");
        repeat_str(&b, "[", (size_t)depth);
        repeat_str(&b, "]", (size_t)depth);
        puts_(&b, "\n");
        char what[64];
        snprintf(what, sizeof what, "nest-%d", depth);
        emit(&b, what);
    }
    /* nested bodies: repeat { residual { repeat { ... } } } */
    puts_(&b, "dataset d(format = idx, path = \"d\", classes = 10)\nmodel m {\n"
              "input(channels = 1, height = 28, width = 28)\npatch_embed(patch = 4, dim = 64)\n");
    for (int i = 0; i < 40; i++)
        puts_(&b, i % 2 ? "residual {\n" : "repeat(2) {\n");
    puts_(&b, "layernorm()\n");
    repeat_str(&b, "}\n", 40);
    puts_(&b, "pool()\nclassifier()\n}\n");
    emit(&b, "nested-bodies");

    /* 100k unary minus, 100k-term sums and products */
    puts_(&b, "const X = ");
    repeat_str(&b, "-", 100000);
    puts_(&b, "1\n");
    emit(&b, "100k-minus");
    puts_(&b, "const X = ");
    repeat_str(&b, "- ", 100000);
    puts_(&b, "1\n");
    emit(&b, "100k-minus-spaced");
    puts_(&b, "const X = 1");
    repeat_str(&b, " + 1", 100000);
    puts_(&b, "\n");
    emit(&b, "100k-sum");
    puts_(&b, "const X = 2");
    repeat_str(&b, " * 2", 100000);
    puts_(&b, "\n");
    emit(&b, "100k-product");
    puts_(&b, "const X = 1");
    repeat_str(&b, " + 1 * 1", 50000);
    puts_(&b, "\n");
    emit(&b, "100k-mixed-ops");
    puts_(&b, "const X = [");
    repeat_str(&b, "1, ", 100000);
    puts_(&b, "]\n");
    emit(&b, "100k-list");

    /* a 10 KB identifier, a 5 KB string, a 10 KB keyword-like name */
    puts_(&b, "const ");
    repeat_str(&b, "a", 10240);
    puts_(&b, " = 1\n");
    emit(&b, "10k-identifier");
    repeat_str(&b, "model", 2048);
    puts_(&b, " m { }\n");
    emit(&b, "10k-kind");
    puts_(&b, "dataset d(format = idx, classes = 10, path = \"");
    repeat_str(&b, "p", 5000);
    puts_(&b, "\")\n");
    emit(&b, "5k-string");

    /* many statements, errors, names */
    for (int i = 0; i < 5000; i++)
        printf_(&b, "const C%d = %d\n", i, i);
    emit(&b, "5k-constants");
    for (int i = 0; i < 5000; i++)
        puts_(&b, "const C = 1\n");
    emit(&b, "5k-duplicate-constants");
    for (int i = 0; i < 3000; i++)
        printf_(&b, "dataset d%d(format = idx, path = \"d\", classes = %d)\n", i, 1 + i % 1000);
    puts_(&b, "model m {\ninput(channels = 1, height = 28, width = 28)\npatch_embed(patch = 4, dim = 8)\n"
              "moe(experts = 4, hidden = 8, router = dataset_aware(map = {d0: 0, d1: 1}))\n"
              "pool()\nclassifier(heads = per_dataset)\n}\n");
    emit(&b, "3k-datasets");
    puts_(&b, "model m {\n");
    for (int i = 0; i < 20000; i++)
        printf_(&b, "    foo%d(x = %d)\n", i, i);
    puts_(&b, "}\n");
    emit(&b, "20k-unknown-layers");
    for (int i = 0; i < 20000; i++)
        puts_(&b, "@");
    puts_(&b, "\n");
    for (int i = 0; i < 20000; i++)
        puts_(&b, "@\n");
    emit(&b, "20k-stray");
    for (int i = 0; i < 5000; i++)
        puts_(&b, "model m { } train { } parallel() ");
    emit(&b, "5k-models");

    /* huge models: the counts of parameters and FLOPs must not overflow */
    for (int r = 1; r <= 30; r += 29) {
        puts_(&b, "dataset d(format = image_folder, path = \"d\", classes = 1000000)\n"
                  "model m {\ninput(channels = 3, height = 4096, width = 4096)\n"
                  "patch_embed(patch = 1, dim = 65536)\ncls_token()\npos_embed()\n");
        for (int i = 0; i < r; i++)
            puts_(&b, "repeat(4096) { residual { layernorm() attention(heads = 1024) }\n"
                      "residual { moe(experts = 4096, hidden = 1048576, top_k = 4096,"
                      " router = cosine(dim = 65536)) } }\n");
        puts_(&b, "pool(kind = cls)\nclassifier(classes = 1000000)\n}\n"
                  "train { batch = 1048576 steps = 1000000000000 }\nparallel(data = 65536, expert = 4096)\n");
        char what[64];
        snprintf(what, sizeof what, "huge-model-%d", r);
        emit(&b, what);
    }
    free(b.p);
}

/* ---- random garbage and token soup ------------------------------------------- */

static void garbage(int n)
{
    buf b = { 0 };
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)1 << below(17); /* 1 byte to 64 KB */
        len += below(len);
        for (size_t j = 0; j < len; j++) {
            char c = (char)rng();
            put(&b, &c, 1);
        }
        emit(&b, "garbage");
        /* printable garbage gets further into the lexer */
        for (size_t j = 0; j < len; j++) {
            char c = (char)(0x20 + below(0x5f));
            if (below(20) == 0)
                c = '\n';
            put(&b, &c, 1);
        }
        emit(&b, "printable-garbage");
    }
    free(b.p);
}

static const char *const words[] = {
    /* statements and layers */
    "const", "dataset", "model", "train", "parallel", "input", "conv_stem", "patch_embed",
    "cls_token", "pos_embed", "layernorm", "attention", "window_attention", "mlp", "moe",
    "dropout", "drop_path", "residual", "repeat", "downsample", "pool", "classifier",
    /* parameters */
    "format", "path", "channels", "size", "resize", "classes", "labels", "weight", "test_split",
    "max_value", "mean", "std", "data", "expert", "batch", "steps", "epochs", "optimizer",
    "schedule", "label_smoothing", "clip_grad", "precision", "augment", "eval_every", "seed",
    "height", "width", "dim", "kernel", "stride", "layers", "patch", "kind", "eps", "heads",
    "qkv_bias", "window", "global_query", "hidden", "act", "experts", "top_k", "capacity",
    "dropless", "batch_priority", "router", "balance_loss", "dataset_loss", "gate_noise", "p",
    "rate", "depth", "moe_blocks", "temperature", "map", "lr", "betas", "momentum", "nesterov",
    "warmup", "min_lr", "every", "gamma", "padding", "alpha", "prob", "n", "m", "start",
    /* words and calls */
    "idx", "mnist_json", "csv", "cifar10", "image_folder", "gtsrb", "bilinear", "nearest", "none",
    "gelu", "relu", "silu", "cls", "learned", "sincos", "shared", "per_dataset", "linear",
    "constant", "fp32", "bf16", "softmax_topk", "switch", "soft", "expert_choice", "cosine",
    "loss_based", "dataset_aware", "adamw", "sgd", "step", "random_crop", "flip", "cutmix",
    "randaugment", "all", "true", "false", "d", "d2", "X", "Y",
    /* literals and punctuation */
    "0", "1", "2", "3", "4", "7", "8", "16", "28", "32", "64", "128", "4096", "65536", "-1",
    "0.5", "1e-3", "1e308", "9223372036854775807", "\"s\"", "\"\"", "(", ")", "(", ")", "[", "]",
    "{", "}", "{", "}", ",", ",", ",", "=", "=", "=", ":", ";", "+", "-", "*", "/", "%", "\n",
    "\n", "\n", "# c\n", "/* c */",
};

static void token_soup(int n)
{
    buf b = { 0 };
    size_t nw = sizeof words / sizeof words[0];
    for (int i = 0; i < n; i++) {
        size_t len = 1 + below(i % 10 == 0 ? 2000 : 200);
        for (size_t j = 0; j < len; j++) {
            puts_(&b, words[below(nw)]);
            puts_(&b, " ");
        }
        emit(&b, "soup");
    }
    /* soup after a good prefix, to get into sema */
    for (int i = 0; i < n; i++) {
        puts_(&b, good_model);
        puts_(&b, "model m2 {\n");
        size_t len = 1 + below(100);
        for (size_t j = 0; j < len; j++) {
            puts_(&b, words[below(nw)]);
            puts_(&b, " ");
        }
        puts_(&b, "\n}\n");
        emit(&b, "good-then-soup");
    }
    free(b.p);
}

/* ---- mutations of the seed files --------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path);
    buf b = { 0 };
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        put(&b, tmp, n);
    fclose(f);
    put(&b, "", 1);
    *len = b.len - 1;
    return b.p;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_word(char c)
{
    return is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static const char *const extremes[] = {
    "0", "1", "-1", "2", "3", "4096", "4097", "65536", "1048576", "2147483647", "2147483648",
    "9223372036854775807", "-9223372036854775807", "1e308", "1e-308", "0.0", "0.999", "1.5",
    "99999999999", "\"x\"", "true", "[]", "{}", "[1, 2]", "none", "X",
};

/* Mutations of one seed file: per_kind of each random kind, truncations
 * at every 97th byte (or cuts random ones when per_kind is small), and
 * up to max_numbers numbers replaced by extreme values. */
static void mutate(const char *path, int per_kind, int cuts, int max_numbers)
{
    size_t len;
    char *src = read_file(path, &len);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    char tag[64];
    snprintf(tag, sizeof tag, "%.*s", (int)strcspn(base, "."), base);
    buf b = { 0 };
    char what[128];
    if (len == 0) {
        free(src);
        return;
    }

    /* truncation at every 97th byte, or at a few random places */
    for (size_t k = 0, cut = 0; cuts ? k < (size_t)cuts : cut < len; k++, cut += 97) {
        if (cuts)
            cut = below(len);
        put(&b, src, cut);
        snprintf(what, sizeof what, "%s-cut-%zu", tag, cut);
        emit(&b, what);
    }
    /* bit flips: one, and a burst of a few */
    for (int i = 0; i < per_kind; i++) {
        put(&b, src, len);
        int flips = i % 2 ? 1 : 1 + (int)below(8);
        for (int k = 0; k < flips; k++)
            b.p[below(len)] ^= (char)(1u << below(8));
        snprintf(what, sizeof what, "%s-flip", tag);
        emit(&b, what);
    }
    /* a byte replaced by an interesting one */
    static const char interesting[] = "\0\n\"'\\(){}[],=:;#/*+-%_.eE09 \x80\xff";
    for (int i = 0; i < per_kind; i++) {
        put(&b, src, len);
        b.p[below(len)] = interesting[below(sizeof interesting - 1)];
        snprintf(what, sizeof what, "%s-byte", tag);
        emit(&b, what);
    }
    /* deletions and duplications of a range */
    for (int i = 0; i < per_kind; i++) {
        size_t at = below(len), n = 1 + below(i % 4 == 0 ? len - at : 16);
        if (at + n > len)
            n = len - at;
        put(&b, src, at);
        put(&b, src + at + n, len - at - n);
        snprintf(what, sizeof what, "%s-delete", tag);
        emit(&b, what);
        put(&b, src, at + n);
        put(&b, src + at, len - at);
        snprintf(what, sizeof what, "%s-duplicate", tag);
        emit(&b, what);
    }
    /* a range copied somewhere else */
    for (int i = 0; i < per_kind / 2; i++) {
        size_t from = below(len), n = 1 + below(64), to = below(len);
        if (from + n > len)
            n = len - from;
        put(&b, src, to);
        put(&b, src + from, n);
        put(&b, src + to, len - to);
        snprintf(what, sizeof what, "%s-splice", tag);
        emit(&b, what);
    }
    /* every number in the code, one at a time, replaced by extreme values */
    int nnum = 0;
    size_t i = 0;
    while (i < len && nnum < max_numbers) {
        bool starts = is_digit(src[i]) && !(i > 0 && (is_word(src[i - 1]) || src[i - 1] == '.'));
        if (!starts) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < len && (is_word(src[j]) || src[j] == '.' ||
                           ((src[j] == '-' || src[j] == '+') && (src[j - 1] == 'e' || src[j - 1] == 'E'))))
            j++;
        size_t line = i;
        while (line > 0 && src[line - 1] != '\n')
            line--;
        if (!memchr(src + line, '#', i - line)) { /* not in a comment */
            put(&b, src, i);
            puts_(&b, extremes[below(sizeof extremes / sizeof extremes[0])]);
            put(&b, src + j, len - j);
            snprintf(what, sizeof what, "%s-number-%d", tag, nnum);
            emit(&b, what);
            nnum++;
        }
        i = j;
    }
    /* lines deleted and swapped */
    size_t lines[4096];
    int nl = 0;
    lines[nl++] = 0;
    for (size_t k = 0; k < len && nl < 4095; k++)
        if (src[k] == '\n')
            lines[nl++] = k + 1;
    lines[nl] = len;
    for (int r = 0; r < per_kind / 2 && nl > 1; r++) {
        int a = (int)below((size_t)nl), c = (int)below((size_t)nl);
        if (a > c) {
            int t = a;
            a = c;
            c = t;
        }
        /* delete line a */
        put(&b, src, lines[a]);
        put(&b, src + lines[a + 1], len - lines[a + 1]);
        snprintf(what, sizeof what, "%s-line-delete", tag);
        emit(&b, what);
        if (a == c)
            continue;
        /* swap lines a and c */
        put(&b, src, lines[a]);
        put(&b, src + lines[c], lines[c + 1] - lines[c]);
        put(&b, src + lines[a + 1], lines[c] - lines[a + 1]);
        put(&b, src + lines[a], lines[a + 1] - lines[a]);
        put(&b, src + lines[c + 1], len - lines[c + 1]);
        snprintf(what, sizeof what, "%s-line-swap", tag);
        emit(&b, what);
    }
    free(b.p);
    free(src);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("usage: fuzz_gen OUTDIR [SEEDFILE...]\n", stderr);
        return 2;
    }
    outdir = argv[1];
    edge_cases();
    garbage(30);
    token_soup(120);
    for (int i = 2; i < argc; i++) {
        size_t len;
        free(read_file(argv[i], &len));
        /* the full treatment for the examples, a lighter one for the rest */
        if (len > 1500)
            mutate(argv[i], 40, 0, 1000);
        else
            mutate(argv[i], 1, 2, 2);
    }
    printf("%d\n", nfiles);
    return 0;
}
