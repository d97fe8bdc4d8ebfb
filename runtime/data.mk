## runtime/data.mk
