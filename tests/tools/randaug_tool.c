/* randaug_tool: one RandAugment operation of libmoert per image, for
 * tests/data/randaug_check.py. Reads from stdin records of a text line
 * "C H W OP MAG" (OP: moert_randaug_name's) and C*H*W bytes (CHW), writes
 * each result's C*H*W bytes to stdout. "ops" as the only argument lists
 * the operations, one per line: NAME SIGNED MAG(m = 0..30, for 32 x 32). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moert_data.h"

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "ops") == 0) {
        for (int op = 0; op < MOERT_RA_OPS; op++) {
            printf("%s %d", moert_randaug_name(op), moert_randaug_signed(op));
            for (int m = 0; m <= 30; m++)
                printf(" %.17g", moert_randaug_magnitude(op, m, 32, 32));
            printf("\n");
        }
        return 0;
    }
    char name[64];
    int c, h, w;
    double mag;
    while (scanf("%d %d %d %63s %lf", &c, &h, &w, name, &mag) == 5) {
        if (getchar() != '\n' || (c != 1 && c != 3) || h < 1 || w < 1 || h > 4096 || w > 4096) {
            fprintf(stderr, "randaug_tool: bad record header\n");
            return 1;
        }
        int op = -1;
        for (int k = 0; k < MOERT_RA_OPS; k++)
            if (strcmp(moert_randaug_name(k), name) == 0)
                op = k;
        if (op < 0) {
            fprintf(stderr, "randaug_tool: unknown operation %s\n", name);
            return 1;
        }
        const size_t n = (size_t)c * (size_t)h * (size_t)w;
        unsigned char *img = malloc(n), *tmp = malloc(n);
        if (!img || !tmp || fread(img, 1, n, stdin) != n) {
            fprintf(stderr, "randaug_tool: short image\n");
            return 1;
        }
        moert_randaug_op(img, c, h, w, op, mag, tmp);
        fwrite(img, 1, n, stdout);
        free(img);
        free(tmp);
    }
    return 0;
}
