/* image_tool: libmoert's decode, channel conversion and resize of image
 * files (moert_image_load), for tests/data/image_check.py. Reads from
 * stdin lines "C H W PATH" and writes, for each, one status byte (0: the
 * image was read, 1: moert_image_load refused it) and, when read, the
 * C*H*W bytes (CHW) it made of PATH at that shape. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moert_data.h"

int main(void)
{
    char path[4096], err[512];
    int c, h, w;
    while (scanf("%d %d %d %4095s", &c, &h, &w, path) == 4) {
        if ((c != 1 && c != 3) || h < 1 || w < 1 || h > MOERT_IMAGE_MAX_DIM || w > MOERT_IMAGE_MAX_DIM) {
            fprintf(stderr, "image_tool: bad shape %d %d %d\n", c, h, w);
            return 1;
        }
        const size_t n = (size_t)c * (size_t)h * (size_t)w;
        unsigned char *img = malloc(n);
        if (!img) {
            fprintf(stderr, "image_tool: out of memory\n");
            return 1;
        }
        const int rc = moert_image_load(path, (moert_shape){ c, h, w }, img, err, sizeof err);
        putchar(rc == 0 ? 0 : 1);
        if (rc == 0)
            fwrite(img, 1, n, stdout);
        else
            fprintf(stderr, "image_tool: %s\n", err);
        free(img);
    }
    return ferror(stdout) ? 1 : 0;
}
