/* core_metrics.c: JSON-lines metrics and the progress line. */
#include "moert_core.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* ---- metrics ----------------------------------------------------------- */

struct moert_metrics {
	FILE *f;
	char *path;
	moert_jw j;
	bool in_record; /* between begin and end */
};

moert_metrics *moert_metrics_open(const char *path, bool append,
				  moert_error *err)
{
	moert_metrics *m = calloc(1, sizeof *m);

	if (!m || !(m->path = strdup(path))) {
		free(m);
		moert_error_set(err, "%s: out of memory", path);
		return NULL;
	}
	m->f = fopen(path, append ? "ae" : "we");
	if (!m->f) {
		moert_error_set(err, "%s: cannot open metrics file (%s)", path,
				strerror(errno));
		free(m->path);
		free(m);
		return NULL;
	}
	moert_jw_init(&m->j);
	return m;
}

moert_jw *moert_metrics_begin(moert_metrics *m)
{
	moert_jw_reset(&m->j);
	moert_jw_object_begin(&m->j, NULL);
	m->in_record = true;
	return &m->j;
}

int moert_metrics_end(moert_metrics *m, moert_error *err)
{
	moert_jw *j = &m->j;

	if (!m->in_record) {
		moert_error_set(err, "%s: moert_metrics_end without "
				"moert_metrics_begin", m->path);
		return -1;
	}
	m->in_record = false;
	if (!moert_jw_error(j) && j->depth == 1)
		moert_jw_object_end(j);
	if (moert_jw_error(j)) {
		moert_error_set(err, "%s: bad metrics record: %s", m->path,
				moert_jw_error(j));
		return -1;
	}
	if (j->depth != 0) {
		moert_error_set(err,
				"%s: bad metrics record: an object or array "
				"was left open",
				m->path);
		return -1;
	}
	/* One fwrite per line: readers tailing the file see whole lines. */
	j->buf[j->len] = '\n';
	errno = 0;
	if (fwrite(j->buf, 1, j->len + 1, m->f) != j->len + 1 ||
	    fflush(m->f) != 0) {
		int e = errno;
		j->buf[j->len] = '\0';
		clearerr(m->f);
		moert_error_set(err, "%s: cannot write metrics (%s)", m->path,
				e ? strerror(e) : "write error");
		return -1;
	}
	j->buf[j->len] = '\0';
	return 0;
}

int moert_metrics_close(moert_metrics *m, moert_error *err)
{
	int rc = 0;

	if (!m)
		return 0;
	if (fclose(m->f) != 0) {
		moert_error_set(err, "%s: cannot write metrics (%s)", m->path,
				strerror(errno));
		rc = -1;
	}
	moert_jw_free(&m->j);
	free(m->path);
	free(m);
	return rc;
}

/* ---- progress line ----------------------------------------------------- */

void moert_progress_init(moert_progress_line *p, FILE *out)
{
	p->out = out;
	p->tty = isatty(fileno(out)) == 1;
	p->interval = p->tty ? 0.1 : 30.0;
	p->last = -1.0;
	p->shown = 0;
}

/* Columns of the terminal behind fd, 80 when unknown. */
static size_t terminal_width(int fd)
{
	struct winsize ws;

	if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
		return ws.ws_col;
	return 80;
}

/* Length in bytes of the longest prefix of s with at most max characters. */
static size_t prefix_of_width(const char *s, size_t max)
{
	size_t chars = 0, i = 0;

	for (; s[i]; i++) {
		if (((unsigned char)s[i] & 0xC0) == 0x80)
			continue;
		if (chars == max)
			break;
		chars++;
	}
	return i;
}

void moert_progress(moert_progress_line *p, bool force, const char *fmt, ...)
{
	char line[1024];
	double now = moert_now();
	va_list ap;
	size_t len, chars;

	if (!force && p->last >= 0 && now - p->last < p->interval)
		return;
	p->last = now;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	line[strcspn(line, "\r\n")] = '\0';
	if (!p->tty) {
		fprintf(p->out, "%s\n", line);
		fflush(p->out);
		return;
	}
	len = prefix_of_width(line, terminal_width(fileno(p->out)) - 1);
	line[len] = '\0';
	chars = 0;
	for (size_t i = 0; i < len; i++)
		chars += ((unsigned char)line[i] & 0xC0) != 0x80;
	fprintf(p->out, "\r%s", line);
	/* Blank out what is left of a longer previous line. */
	for (size_t i = chars; i < p->shown; i++)
		fputc(' ', p->out);
	p->shown = chars > p->shown ? chars : p->shown;
	fflush(p->out);
}

void moert_progress_clear(moert_progress_line *p)
{
	if (!p->tty || p->shown == 0)
		return;
	fputc('\r', p->out);
	for (size_t i = 0; i < p->shown; i++)
		fputc(' ', p->out);
	fputc('\r', p->out);
	fflush(p->out);
	p->shown = 0;
}

void moert_progress_end(moert_progress_line *p)
{
	if (!p->tty || p->shown == 0)
		return;
	fputc('\n', p->out);
	fflush(p->out);
	p->shown = 0;
}
