/* fuzz_replay.c: the libFuzzer targets' inputs without libFuzzer, for
 * `make check`: each file named (or, with a directory, each file in it)
 * goes to LLVMFuzzerTestOneInput whole, then cut at 64 lengths, then with
 * 64 of its bytes changed (set to 0, 0xff or a flipped bit, at spread
 * places): the same inputs every run. A crash or abort of the target fails
 * the test; it prints how many inputs ran.
 *
 *   fuzz_files_replay [FILE|DIR...]   default: $top_srcdir/tests/fuzz/files */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static long runs;

static void run(const uint8_t *p, size_t n)
{
    LLVMFuzzerTestOneInput(p, n);
    runs++;
}

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            uint8_t *b = realloc(buf, cap);
            if (!b) {
                fprintf(stderr, "%s: out of memory\n", path);
                free(buf);
                fclose(f);
                return -1;
            }
            buf = b;
        }
        const size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    run(buf, n);
    /* cut: 64 lengths from 0 to n - 1 */
    for (int i = 0; i < 64 && n > 0; i++)
        run(buf, (size_t)i * n / 64);
    /* 64 bytes changed, one at a time, past the first (the reader's pick) */
    uint8_t *m = malloc(n ? n : 1);
    if (!m) {
        free(buf);
        return -1;
    }
    for (int i = 0; i < 64 && n > 1; i++) {
        memcpy(m, buf, n);
        const size_t at = 1 + (size_t)i * (n - 1) / 64;
        m[at] = i % 3 == 0 ? 0 : i % 3 == 1 ? 0xff : (uint8_t)(m[at] ^ (1u << (i / 3 % 8)));
        run(m, n);
    }
    free(m);
    free(buf);
    return 0;
}

static int replay(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return replay_file(path);
    struct dirent **names;
    const int k = scandir(path, &names, NULL, alphasort);
    if (k < 0) {
        perror(path);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < k; i++) {
        char file[4096];
        if (names[i]->d_name[0] != '.' &&
            (size_t)snprintf(file, sizeof file, "%s/%s", path, names[i]->d_name) < sizeof file)
            rc |= replay_file(file);
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    int rc = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            rc |= replay(argv[i]);
    } else {
        const char *top = getenv("top_srcdir");
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/tests/fuzz/files", top && *top ? top : ".");
        rc = replay(dir);
    }
    printf("%ld inputs replayed%s\n", runs, rc ? ", some files unreadable" : "");
    return rc ? 1 : 0;
}
