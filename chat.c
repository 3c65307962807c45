/* chat.c: interactive sessions (`mamba run --interactive`, `mamba chat`). After each generation
 * (EOS, -n tokens, a --stop string, or Ctrl-C) the next line of standard input, between
 * --in-prefix and --in-suffix, is run and generated from, the state carried on: one sequence,
 * turn after turn (generate.c's Session). On a terminal the line is read with libedit (editing,
 * history); from a pipe, one line a turn, each turn's output flushed as it comes. Ctrl-C while
 * generating stops the generation and returns to the input; Ctrl-C at the input, or its end
 * (Ctrl-D), ends the session with status 0, --state-out saving it. */
#include "mamba.h"

#include <editline/readline.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t g_at_input;

/* At the input, Ctrl-C ends the session: standard input becomes /dev/null, so that the line
 * editor's (or getline's) next read finds its end. While generating, it stops the generation. */
static void on_sigint_chat(int sig) {
    (void)sig;
    if (g_at_input) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd >= 0) dup2(fd, STDIN_FILENO), close(fd);
    } else {
        g_interrupted = 1;
    }
}

/* No SA_RESTART: a read waiting for input returns at Ctrl-C. */
static void catch_sigint_chat(void) {
    struct sigaction sa = {.sa_handler = on_sigint_chat};
    sigaction(SIGINT, &sa, NULL);
}

/* The next line of input without its line end, or NULL at the end of the input (or Ctrl-C). */
static char *read_input_line(int terminal) {
    char *line = NULL;
    g_at_input = 1;
    if (terminal) {
        line = readline("> ");
        if (line && *line) add_history(line);
    } else {
        size_t cap = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) free(line), line = NULL;
        else if (n && line[n - 1] == '\n') line[--n] = '\0';
        if (line && n && line[n - 1] == '\r') line[--n] = '\0';
    }
    g_at_input = 0;
    return line;
}

/* The ids of a line between --in-prefix and --in-suffix; BOS first when it starts the sequence
 * and the tokenizer wants one. */
static int *line_ids(const Session *q, const RunOptions *o, const char *line, size_t *n) {
    const Tokenizer *tok = session_tokenizer(q);
    if (!tok) die("this model has no tokenizer: interactive turns are text (use --tokenizer FILE)");
    const char *pre = o->in_prefix ? o->in_prefix : "", *post = o->in_suffix ? o->in_suffix : "";
    size_t len = strlen(pre) + strlen(line) + strlen(post);
    char *text = xmalloc(len + 1);
    snprintf(text, len + 1, "%s%s%s", pre, line, post);
    char err[512];
    int *ids;
    if (tokenizer_encode(tok, text, len, session_length(q) == 0 && tokenizer_wants_bos(tok), &ids, n, err, sizeof err))
        die("cannot tokenize the input: %s", err);
    free(text);
    return ids;
}

void chat(const RunOptions *o) {
    /* a prompt given with the command is the first turn */
    size_t n_first = 0;
    int *first = NULL;
    Session *q = session_open(o, o->prompt || o->prompt_ids ? &first : NULL, &n_first);
    const int terminal = isatty(STDIN_FILENO);
    catch_sigint_chat();
    if (first) session_turn(q, first, n_first, o->echo);
    free(first);
    for (char *line; (line = read_input_line(terminal)); free(line)) {
        size_t n;
        int *ids = line_ids(q, o, line, &n);
        g_interrupted = 0;
        if (n || session_length(q)) session_turn(q, ids, n, 0);
        g_interrupted = 0;   /* Ctrl-C stopped this generation only */
        free(ids);
    }
    session_close(q);
}
