/* core_error.c: one-line error messages for libmoert's callers. */
#include "moert_core.h"

#include <stdarg.h>
#include <string.h>

void moert_error_set(moert_error *err, const char *fmt, ...)
{
	/* Format into a local buffer first: err->msg may be an argument. */
	char buf[sizeof err->msg];
	va_list ap;
	int n;

	if (!err)
		return;
	if (!fmt) {
		err->msg[0] = '\0';
		return;
	}
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0) {
		snprintf(err->msg, sizeof err->msg, "(unformattable message: %s)",
			 fmt);
		return;
	}
	if ((size_t)n >= sizeof buf) {
		/* Truncated: back up to a UTF-8 character boundary so that
		 * the "..." never splits a character. */
		size_t end = sizeof buf - 4;
		while (end > 0 && ((unsigned char)buf[end] & 0xC0) == 0x80)
			end--;
		memcpy(buf + end, "...", 4);
	}
	memcpy(err->msg, buf, sizeof buf);
}

void moert_error_clear(moert_error *err)
{
	if (err)
		err->msg[0] = '\0';
}
